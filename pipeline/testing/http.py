"""The HTTP plumbing the project's test servers share (gmail_server, openai_server).

A threaded `http.server` on a background thread, a base request handler that reads the body and
writes an answer, and the command lines' serve-until-a-signal loop. What each server answers is its
own: a handler subclass turns the request into a call of its server and writes the reply.

- HTTP/1.1 keep-alive: clients (httplib2, httpx) keep connections open; every answer carries a
  Content-Length. Nagle is off: headers and body go out in two writes, and with Nagle on, delayed
  ACKs add ~40 ms to every call.
- A backlog of 256: socketserver's default of 5 drops the SYNs of a burst of new connections, and
  each dropped one waits a 1 s SYN retransmit, which would cap the concurrency a benchmark measures.
- `stop()` ends kept-alive connections too, so no handler thread keeps serving after it.
- `arrived_at` is when the request line was read (time.monotonic()), before the body and before any
  latency a server injects: the moment the server received the call.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Protocol, Self, cast


class Reply(Protocol):
    """What a handler writes: a status, headers and a body."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...


class ThreadedServer(ThreadingHTTPServer):
    """One thread a connection; `app` is the object the handlers serve (the test server)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: Any) -> None:
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            if is_open:
                self._open.add(conn)
            else:
                self._open.discard(conn)

    def close_connections(self) -> None:
        """End kept-alive connections so no handler thread keeps serving after stop()."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    """Reads each request's body and hands it to `serve`, which subclasses write."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    sys_version = ""
    arrived_at = 0.0

    @property
    def app(self) -> Any:
        return cast(ThreadedServer, self.server).app

    def setup(self) -> None:
        super().setup()
        cast(ThreadedServer, self.server).track(self.connection, True)

    def finish(self) -> None:
        cast(ThreadedServer, self.server).track(self.connection, False)
        super().finish()

    def parse_request(self) -> bool:
        self.arrived_at = time.monotonic()  # the request line has just been read
        return super().parse_request()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.serve(self.rfile.read(length) if length else b"")

    def serve(self, body: bytes) -> None:
        """Answer the request (self.command, self.path, self.headers, `body`), e.g. with `send`."""
        raise NotImplementedError

    def send(self, reply: Reply) -> bool:
        """Write `reply`; False when the client has gone (an injected stall outlasted its timeout)."""
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True
            return False
        return True

    def reset(self) -> None:
        """No answer: reset the connection, the way a crashed or restarting upstream drops one."""
        # SO_LINGER 0: close() sends RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass


class ServerThread:
    """Serves `handler` for `app` on a background thread: start(), stop(), the bound port."""

    def __init__(self, handler: type[Handler], app: Any, name: str) -> None:
        self.handler, self.app, self.name = handler, app, name
        self._httpd: ThreadedServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self, host: str, port: int) -> int:
        """Serve on (host, port) unless already serving; the bound port (port 0 picks a free one)."""
        if self._httpd is None:
            self._httpd = ThreadedServer((host, port), self.handler, self.app)
            # A short poll interval keeps stop() fast: shutdown() waits for the loop's next poll.
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=self.name,
                                            daemon=True)
            self._thread.start()
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class Served:
    """A server on `host`:`port` with start() and stop(): its `url`, and use as a context manager."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _StatsServer(Protocol):
    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def serve_until_signal(server: _StatsServer, announce: Callable[[], Mapping[str, Any]]) -> int:
    """A command line's main loop: start, print `announce()` as one JSON line on stdout, serve until
    SIGTERM or SIGINT, then print the server's stats as JSON on stderr."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        print(json.dumps(announce()), flush=True)
        while not stop.wait(0.5):
            pass
        print(json.dumps({"stats": server.stats()}), file=sys.stderr, flush=True)
    return 0


__all__ = ["Handler", "Reply", "Served", "ServerThread", "ThreadedServer", "serve_until_signal"]
