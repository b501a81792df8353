"""The `mailpipe` command line: import, sync, status, search, contacts, insights, serve, demo; worker, beat
and flower."""

from __future__ import annotations

import json
import signal
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.errors import BadInputError, ConfigError, MailpipeError, RunConflictError
from pipeline.importing import ImportSummary, import_mbox
from pipeline.runs import RunProgress, fill_progress_cache
from pipeline.settings import Settings
from pipeline.sources.mbox import open_mbox
from pipeline.storage.db import HEAD_REVISION
from pipeline.storage.models import STAGES
from pipeline.syncing import SyncSummary
from tasks.runtime import Runtime, runtime
from tasks.shutdown import skip_final_collection

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of tables.")
AccountOpt = typer.Option(None, "--account", help="Account email (default: the only account).")


def main() -> None:
    # SIGTERM behaves like Ctrl-C: the run is marked abandoned and the worker pool stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        app()
    except BadInputError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (ConfigError, RunConflictError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except MailpipeError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted; run `mailpipe import` again to resume (nothing is counted twice)")
        sys.exit(130)
    finally:
        skip_final_collection()


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------ import


class ProgressView:
    """Live per-stage progress: messages through each stage and messages/s."""

    def __init__(self, console: Console, title: str = "import") -> None:
        self.console = console
        self.title = title
        self.started = time.monotonic()
        self.live: Live | None = None

    def __enter__(self) -> ProgressView:
        self.live = Live(self._render(None), console=self.console, refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.__exit__(None, None, None)

    def tick(self, p: RunProgress) -> None:
        if self.live:
            self.live.update(self._render(p))

    def _render(self, p: RunProgress | None) -> Table:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        table = Table(title=self.title if p is None else f"run {p.run_id} ({p.mode}): {p.status}",
                      title_justify="left")
        table.add_column("stage")
        table.add_column("messages", justify="right")
        table.add_column("msg/s", justify="right")
        table.add_column("failed windows", justify="right")
        entries = p.entries if p else 0
        total = f"{entries}" + ("" if p and p.reading_done else "+")
        table.add_row("read", total, f"{entries / elapsed:.0f}", "")
        for stage in STAGES:
            done = p.stage_done[stage] if p else 0
            failed = p.stage_failed_windows[stage] if p else 0
            table.add_row(stage, f"{done}/{total}", f"{done / elapsed:.0f}", str(failed) if failed else "")
        return table


def _do_import(settings: Settings, path: Path, account: str | None, as_json: bool) -> ImportSummary:
    open_mbox(path)  # bad input fails here, before any server, worker or row exists
    with runtime(settings, workers=True) as rt:
        _announce_workers(rt)
        rt.resume_owed_enrichment()
        if as_json:
            return _import(rt, path, account, None)
        with ProgressView(err) as view:
            return _import(rt, path, account, view.tick)


def _announce_workers(rt: Runtime) -> None:
    """Say on stderr (--json or not) when the work goes to a running `mailpipe worker`: its settings apply."""
    if rt.standing is not None:
        err.print(f"handing the work to the running mailpipe worker (pid {rt.standing.pid}, "
                  f"{rt.standing.concurrency} process(es); log: {rt.standing.log_path})", highlight=False)


def _import(rt: Runtime, path: Path, account: str | None, tick: Any) -> ImportSummary:
    return import_mbox(rt.engine, rt.settings, path, account, rt.dispatch, on_tick=tick, alive=rt.restart_check)


def _print_summary(summary: ImportSummary) -> None:
    table = Table(title=f"imported {summary.account}", title_justify="left", show_header=False)
    for key, value in summary.as_dict().items():
        if value is not None:
            table.add_row(key, str(value))
    out.print(table)
    if summary.failed or summary.failed_windows:
        err.print(f"[yellow]{summary.failed} message(s) and {summary.failed_windows} window stage(s) failed; "
                  "see `mailpipe status`[/yellow]")
    if summary.enrichment_owed:
        err.print(f"[yellow]enrichment of {summary.enrichment_owed} window(s) is owed: the AI endpoint was "
                  "unavailable. It resumes by itself once the endpoint answers (the beat's sweep, or the next "
                  "`mailpipe import`).[/yellow]")


@app.command("import")
def import_command(
    path: Path = typer.Argument(..., help="An mbox file (Google Takeout's, plain or .gz)."),
    account: str | None = typer.Option(None, "--account", help="Whose mailbox (default: guessed)."),
    as_json: bool = JsonOpt,
) -> None:
    """Import a mailbox file: ingest, normalize, contacts, embeddings, insights."""
    summary = _do_import(Settings(), path, account, as_json)
    if as_json:
        _json(summary.as_dict())
    else:
        _print_summary(summary)
    if summary.status != "done" or summary.failed_windows:
        raise typer.Exit(1)  # owed enrichment alone is not a failure: it resumes by itself


# ------------------------------------------------------------------ Gmail accounts and sync

accounts_app = typer.Typer(no_args_is_help=True, help="Connect, list and remove Gmail accounts.")
app.add_typer(accounts_app, name="accounts")


@accounts_app.command("add")
def accounts_add(
    email: str = typer.Argument(..., help="The Gmail address to connect."),
    client_secrets: Path | None = typer.Option(
        None, "--client-secrets", help="OAuth client file (Google Cloud console: Desktop app)."
    ),
    grant_file: Path | None = typer.Option(
        None, "--grant-file", help="JSON with refresh_token, client_id, client_secret, token_uri (headless)."
    ),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the consent URL instead of opening it."),
    as_json: bool = JsonOpt,
) -> None:
    """Connect a Gmail account through Google's consent screen; its refresh token is stored encrypted."""
    from pipeline.accounts import connect_account
    from pipeline.credentials import OAuthGrant, TokenCipher, authorize_installed_app

    settings = Settings()
    cipher = TokenCipher.from_settings(settings)  # a missing key fails before the browser opens
    if (client_secrets is None) == (grant_file is None):
        raise BadInputError("pass exactly one of --client-secrets FILE or --grant-file FILE")
    if grant_file is not None:
        try:
            grant = OAuthGrant.from_json(grant_file.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInputError(f"{grant_file}: not a grant file ({exc})") from exc
    else:
        assert client_secrets is not None
        grant = authorize_installed_app(client_secrets, open_browser=not no_browser)
    with runtime(settings) as rt:
        account_id = connect_account(rt.engine, cipher, email, grant)
    if as_json:
        _json({"account_id": account_id, "email": email.lower(), "connected": True})
    else:
        out.print(f"connected {email.lower()}; now run: mailpipe sync {email.lower()}")


@accounts_app.command("list")
def accounts_list(as_json: bool = JsonOpt) -> None:
    """Every account: kind, status (and what to do when it needs you), messages, last sync."""
    from pipeline.accounts import list_accounts

    with runtime(Settings()) as rt:
        rows = list_accounts(rt.engine)
    if as_json:
        _json({"accounts": [r.as_dict() for r in rows]})
        return
    table = Table(title="accounts", title_justify="left")
    for col in ("email", "kind", "status", "messages", "last sync", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.email, r.kind, r.status, str(r.messages), str(r.last_synced_at or "")[:19],
                      r.status_reason or "")
    out.print(table)


@accounts_app.command("remove")
def accounts_remove(
    email: str = typer.Argument(...),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    as_json: bool = JsonOpt,
) -> None:
    """Delete an account and everything stored for it (messages, contacts, embeddings)."""
    from pipeline.accounts import account_id_for, remove_account

    with runtime(Settings()) as rt:
        account_id_for(rt.engine, email)
        if not yes and not typer.confirm(f"delete {email} and all its mail from mailpipe?"):
            raise typer.Exit(1)
        removed = remove_account(rt.engine, email)
    if as_json:
        _json({"email": email.lower(), "removed_messages": removed})
    else:
        out.print(f"removed {email.lower()} ({removed} messages)")


@accounts_app.command("keygen")
def accounts_keygen() -> None:
    """Print a new key for MAILPIPE_SECRET_KEY (to rotate: prepend it, comma-separated)."""
    from pipeline.credentials import new_key

    out.print(new_key())


@accounts_app.command("token")
def accounts_token(
    email: str = typer.Argument(..., help="The account the token may read and sync (and nothing else)."),
    name: str = typer.Option("", "--name", help="A note saying what the token is for."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a web API token for one account. It is printed once: only its hash is stored."""
    from pipeline.accounts import account_id_for
    from pipeline.api_auth import issue_token

    with runtime(Settings()) as rt:
        issued = issue_token(rt.engine, account_id_for(rt.engine, email), name)
    if as_json:
        _json({"id": issued.id, "account": email.strip().lower(), "token": issued.token, "prefix": issued.prefix,
               "name": issued.name})
        return
    sys.stdout.write(issued.token + "\n")
    err.print(f"token {issued.id} for {email.strip().lower()}: shown this once; send it as "
              "`Authorization: Bearer <token>`", highlight=False)


@accounts_app.command("tokens")
def accounts_tokens(email: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """The account's web API tokens (their first characters only) and whether they are revoked."""
    from pipeline.accounts import account_id_for
    from pipeline.api_auth import list_tokens

    with runtime(Settings()) as rt:
        rows = list_tokens(rt.engine, account_id_for(rt.engine, email))
    if as_json:
        _json({"account": email.strip().lower(), "tokens": rows})
        return
    table = Table(title=f"API tokens of {email.strip().lower()}", title_justify="left")
    for col in ("id", "prefix", "name", "created", "revoked"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), r["prefix"] + "…", r["name"], r["created_at"][:19], (r["revoked_at"] or "")[:19])
    out.print(table)


@accounts_app.command("revoke-token")
def accounts_revoke_token(email: str = typer.Argument(...), token_id: int = typer.Argument(...),
                          as_json: bool = JsonOpt) -> None:
    """Revoke one of the account's web API tokens (by the id `accounts tokens` shows)."""
    from pipeline.accounts import account_id_for
    from pipeline.api_auth import revoke_token

    with runtime(Settings()) as rt:
        revoked = revoke_token(rt.engine, account_id_for(rt.engine, email), token_id)
    if not revoked:
        raise BadInputError(f"{email} has no live token {token_id}; see `mailpipe accounts tokens {email}`")
    if as_json:
        _json({"account": email.strip().lower(), "revoked": token_id})
    else:
        out.print(f"revoked token {token_id}")


@accounts_app.command("webhook-secret")
def accounts_webhook_secret(email: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """The secret that signs sync triggers for this account (derived from MAILPIPE_SECRET_KEY)."""
    from pipeline.accounts import account_id_for
    from pipeline.api_auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_secret

    settings = Settings()
    secret = webhook_secret(settings, email)  # no key: ConfigError before anything starts
    with runtime(settings) as rt:
        account_id_for(rt.engine, email)
    if as_json:
        _json({"account": email.strip().lower(), "secret": secret, "timestamp_header": TIMESTAMP_HEADER,
               "signature_header": SIGNATURE_HEADER})
        return
    sys.stdout.write(secret + "\n")
    err.print(f"sign POST /v1/accounts/{email.strip().lower()}/sync with {TIMESTAMP_HEADER}: <unix seconds> and "
              f'{SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>', highlight=False)


def _do_sync(settings: Settings, email: str, mode: str, as_json: bool, *, standing: bool = True) -> SyncSummary:
    from pipeline.accounts import account_id_for, gmail_client
    from pipeline.syncing import sync_account

    with runtime(settings) as rt:  # an unknown account, a missing key or a bad grant fail before workers start
        account_id = account_id_for(rt.engine, email)
        gmail_client(rt.engine, rt.settings, account_id)
    with runtime(settings, workers=True, standing=standing) as rt:
        _announce_workers(rt)
        client = gmail_client(rt.engine, rt.settings, account_id)

        def run(tick: Any) -> SyncSummary:
            return sync_account(rt.engine, rt.settings, account_id, client, rt.dispatch, mode=mode,
                                on_tick=tick, alive=rt.restart_check)

        if as_json:
            return run(None)
        with ProgressView(err, title=f"sync {email}") as view:
            return run(view.tick)


def _print_sync(summary: SyncSummary) -> None:
    table = Table(title=f"synced {summary.account} ({summary.mode})", title_justify="left", show_header=False)
    for key, value in summary.as_dict().items():
        if value is not None:
            table.add_row(key, str(value))
    out.print(table)
    if summary.error:
        err.print(f"[yellow]{summary.error}[/yellow]", highlight=False)


@app.command()
def sync(
    account: str = typer.Argument(..., help="The connected Gmail address."),
    mode: str = typer.Option("auto", "--mode", help="auto (incremental when a cursor exists), full, incremental."),
    as_json: bool = JsonOpt,
) -> None:
    """Sync a Gmail account: full the first time, then incremental from the history cursor."""
    summary = _do_sync(Settings(), account, mode, as_json)
    if as_json:
        _json(summary.as_dict())
    else:
        _print_sync(summary)
    if summary.status != "done" or summary.failed_windows:
        raise typer.Exit(1)


# ------------------------------------------------------------------ read commands


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Per account: messages, threads, contacts, chunks, insights, failures and recent runs; and the
    operations: queues, workers, breakers, paused accounts, quota use, recent failures, stuck runs."""
    from pipeline.embeddings.reembed import chunks_by_model
    from pipeline.reports import operations
    from pipeline.reports import status as status_report
    from tasks.metrics import snapshot

    settings = Settings()
    with runtime(settings) as rt:
        accounts = status_report(rt.engine)
        models = chunks_by_model(rt.engine)
        ops = operations(snapshot(rt.engine, settings))
    breakers = ops.pop("breakers")
    if as_json:
        _json({"accounts": accounts, "breakers": breakers, "chunks_by_model": models, **ops})
        return
    _print_operations(ops)
    if not accounts:
        out.print("no account yet: mailpipe import PATH")
    if models:
        # Search compares only vectors of the current model: chunks of another one are invisible to it.
        out.print("chunks by model: " + ", ".join(f"{m} {n}" for m, n in models.items()), highlight=False)
        if len(models) > 1:
            err.print("[yellow]several embedding models:[/yellow] `mailpipe reembed` embeds the rest with the "
                      "configured one", highlight=False)
    for b in breakers:
        if b["state"] != "closed" or b["failures"]:
            wait = f", next probe in {b['retry_after']:.0f} s" if b["retry_after"] else ""
            out.print(f"breaker {b['name']}: {b['state']} ({b['failures']} failures{wait})", highlight=False)
    for a in accounts:
        table = Table(title=a["email"], title_justify="left", show_header=False)
        for key in ("status", "messages", "threads", "contacts", "chunks", "insights", "failures"):
            table.add_row(key, str(a[key]))
        out.print(table)
        if a["action"]:
            err.print(f"[yellow]action needed:[/yellow] {a['action']}", highlight=False, soft_wrap=True)
        for r in a["runs"]:
            stages = "  ".join(f"{k} {v['messages_done']}" + (f" ({v['failed_windows']} failed)"
                               if v["failed_windows"] else "") for k, v in r["stages"].items())
            out.print(f"  run {r['run_id']} {r['mode']} {r['status']}: {r['entries']} entries, "
                      f"{r['new_messages']} new, {r['duplicates']} duplicates, {r['failed']} failed; {stages}",
                      highlight=False)
            if r["error"]:
                out.print(f"    error: {r['error']}", highlight=False)


def _print_operations(ops: dict[str, Any]) -> None:
    """The operational picture, one short line per thing that needs a look; quiet when all is well."""
    if ops["queues"] is not None:
        unacked = f"; {ops['unacked']} reserved by workers" if ops.get("unacked") else ""
        out.print("queues: " + ", ".join(f"{q} {n}" for q, n in ops["queues"].items()) + unacked, highlight=False)
    if ops["workers"]:
        out.print("workers: " + ", ".join(f"{w['worker']} ({w['processes']} proc, {w['rss_bytes'] / 2**20:.0f} MiB)"
                                          for w in ops["workers"]), highlight=False)
    elif ops["workers"] is not None:
        out.print("workers: none seen in the last minute", highlight=False)
    rates = {k: v for k, v in (ops["stage_rates"] or {}).items() if v}
    if rates:
        out.print("msg/s (last minute): " + ", ".join(f"{k} {v:g}" for k, v in rates.items()), highlight=False)
    for q in ops["quota"] or []:
        used = "?" if q["used_last_minute"] is None else f"{q['used_last_minute']:.0f}"
        slow = f", rate at {q['rate_factor']:.0%}" if q["rate_factor"] < 1 else ""
        out.print(f"quota {q['account']}: {used} of {q['limit_per_minute']:.0f} units in the last minute{slow}",
                  highlight=False)
    for p in ops["paused_accounts"] or []:
        until = f" until {p['resumes_at']}" if p["resumes_at"] else ""
        err.print(f"[yellow]paused:[/yellow] {p['account']} ({p['reason']}){until}", highlight=False)
    for f in ops["recent_failures"] or []:
        out.print(f"failures (24 h): {f['count']} {f['stage']} {f['error_class']}, latest: {f['example']}",
                  highlight=False, soft_wrap=True)
    for r in ops["stuck_runs"] or []:
        err.print(f"[yellow]stuck:[/yellow] run {r['run_id']} of {r['account']} ({r['mode']}): {r['reason']}",
                  highlight=False)
    for part, why in (ops["unreadable"] or {}).items():
        err.print(f"[yellow]could not read {part}:[/yellow] {why}", highlight=False)


@app.command()
def search(
    query: str = typer.Argument(...),
    limit: int = typer.Option(10, "--limit", min=1, max=200),
    sender: str | None = typer.Option(None, "--from", help="A sender's address (exactly), or words of their "
                                      "name or address, each matching the start of a word: 'jan' finds Jane Doe, "
                                      "'globex' bob@globex.com (case-insensitive)."),
    after: str | None = typer.Option(None, "--after", help="Sent on or after this day (YYYY-MM-DD, UTC)."),
    before: str | None = typer.Option(None, "--before", help="Sent before this day (YYYY-MM-DD, UTC)."),
    label: list[str] | None = typer.Option(None, "--label", help="Has this label (repeat: has all of them)."),
    all_messages: bool = typer.Option(False, "--all-messages", help="Every matching message, not one per thread."),
    account: str | None = AccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Hybrid semantic + full-text search; one hit per thread."""
    from pipeline.embeddings import query_embedder_for
    from pipeline.reports import resolve_account
    from pipeline.search import make_filters
    from pipeline.search import search as run_search

    filters = make_filters(sender, after, before, label or [])  # bad input exits 2 before anything starts
    settings = Settings()
    with runtime(settings) as rt:
        account_id = resolve_account(rt.engine, account)[0] if account else None
        embedder = query_embedder_for(settings, rt.engine)
        hits = run_search(rt.engine, query, account_id=account_id, limit=limit, embedder=embedder,
                          filters=filters, per_thread=not all_messages)
    if as_json:
        _json({"query": query, "filters": _filters_json(filters), "hits": [h.as_dict() for h in hits]})
        return
    table = Table(title=f"search: {query}", title_justify="left")
    for col in ("score", "date", "from", "subject", "snippet"):
        table.add_column(col, overflow="fold")
    for h in hits:
        table.add_row(f"{h.score:.4f}", (h.date or "")[:10], Text(h.from_), Text(h.subject), _marked(h.snippet))
    out.print(table)


def _filters_json(filters: Any) -> dict[str, Any]:
    return {"from": filters.sender, "after": filters.after, "before": filters.before, "labels": list(filters.labels)}


def _marked(snippet: str) -> Text:
    """The snippet with its «matched» words in bold; mail text is never read as rich markup."""
    result = Text()
    for i, part in enumerate(snippet.replace("»", "«").split("«")):
        result.append(part, style="bold" if i % 2 else "")
    return result


@app.command()
def contacts(
    limit: int = typer.Option(20, "--limit", min=1, max=10_000),
    account: str | None = AccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The people you correspond with, ranked by recent two-way traffic."""
    from pipeline.reports import as_dicts, resolve_account, top_contacts

    settings = Settings()
    with runtime(settings) as rt:
        account_id, email = resolve_account(rt.engine, account)
        rows = top_contacts(rt.engine, account_id, limit, settings.contact_half_life_days)
    if as_json:
        _json({"account": email, "contacts": as_dicts(rows)})
        return
    table = Table(title=f"contacts of {email}", title_justify="left")
    for col in ("rank", "email", "name", "sent", "received", "threads", "last_seen"):
        table.add_column(col, justify="right" if col in ("rank", "sent", "received", "threads") else "left")
    for c in rows:
        table.add_row(f"{c.rank:.2f}", c.email, c.name, str(c.sent), str(c.received), str(c.threads),
                      (c.last_seen or "")[:10])
    out.print(table)


@app.command()
def insights(
    limit: int = typer.Option(20, "--limit", min=1, max=10_000),
    needs_reply: bool = typer.Option(False, "--needs-reply", help="Only threads waiting for your reply."),
    category: str | None = typer.Option(None, "--category", help="Only threads of this category."),
    account: str | None = AccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Thread insights: category, needs-reply, summary, action items (`mailpipe thread ID` shows one)."""
    from pipeline.insights.views import insight_rows
    from pipeline.reports import resolve_account

    with runtime(Settings()) as rt:
        account_id, email = resolve_account(rt.engine, account)
        rows = insight_rows(rt.engine, account_id, limit, needs_reply="to_reply" if needs_reply else None,
                            category=category)
    if as_json:
        _json({"account": email, "insights": rows})
        return
    table = Table(title=f"insights for {email}", title_justify="left")
    for col in ("thread", "category", "needs reply", "summary", "actions", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        # Text(): summaries and actions come from mail (and a model); never read them as rich markup.
        actions = "\n".join(_action_line(a) for a in r["action_items"][:3])
        table.add_row(str(r["thread_id"]), r["category"], r["needs_reply"], Text(r["summary"][:240]),
                      Text(actions), r["source"])
    out.print(table)


def _action_line(item: dict[str, str]) -> str:
    due = f" (due {item['due']})" if item.get("due") else ""
    return f"- {item.get('who') or '?'}: {item.get('what', '')}{due}"


@app.command()
def thread(
    thread_id: int = typer.Argument(..., help="A thread id, as `mailpipe insights` lists them."),
    as_json: bool = JsonOpt,
) -> None:
    """One thread: its summary, action items, category, needs-reply, and its messages."""
    from pipeline.insights.views import thread_detail

    with runtime(Settings()) as rt:
        detail = thread_detail(rt.engine, thread_id)
    if as_json:
        _json(detail)
        return
    out.print(Text(f"thread {detail['thread_id']}: {detail['subject']} ({detail['message_count']} messages)",
                   style="bold"))
    insight = detail["insight"]
    if insight is None:
        out.print("no insight yet (the insight stage has not run for this thread)")
    else:
        out.print(Text(f"{insight['category']} · {insight['needs_reply']} · {insight['source']}"))
        out.print(Text(insight["summary"]))
        for item in insight["action_items"]:
            out.print(Text(_action_line(item)))
    for m in detail["messages"]:
        sender = f"{m['from_name']} <{m['from']}>" if m["from_name"] else (m["from"] or "?")
        out.rule(Text(f"{(m['date'] or '')[:16]}  {sender}{'  (me)' if m['from_me'] else ''}"), align="left")
        out.print(Text(m["text"].strip() or "(no text)"))


@app.command()
def enrich(
    estimate: bool = typer.Option(False, "--estimate", help="Print what enriching the pending mail with LLM "
                                  "insights would cost; nothing is called."),
    account: str | None = AccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Resume now the AI enrichment an outage left owed, and wait for it. With --estimate: what enriching
    the pending mail with LLM insights would cost (threads, messages, tokens), calling nothing."""
    from pipeline.insights.estimate import estimate_pending
    from pipeline.reports import resolve_account

    settings = Settings()
    if not estimate:
        _enrich_owed(settings, account, as_json)
        return
    with runtime(settings) as rt:
        account_id = resolve_account(rt.engine, account)[0] if account else None
        result = estimate_pending(rt.engine, settings, account_id)
    if as_json:
        _json(result.as_dict())
        return
    table = Table(title="insights pending (estimate; nothing was called)", title_justify="left", show_header=False)
    rows = [
        ("insights mode", f"{result.mode} ({result.model})" if result.mode == "llm" else result.mode),
        ("messages pending", f"{result.messages_pending}" + (f" ({result.messages_not_normalized} not normalized "
                                                             "yet, not counted)" if result.messages_not_normalized
                                                             else "")),
        ("threads pending", str(result.threads_pending)),
        ("  rules only (bulk)", str(result.threads_rules)),
        ("  already summarized", str(result.threads_covered)),
        ("  LLM requests", f"{result.threads_llm} ({result.threads_incremental} incremental)"),
        ("prompt tokens", f"{result.prompt_tokens:,}"),
        ("completion tokens", f"~{result.completion_tokens:,}"),
        ("cost", f"${result.cost_usd:.4f} (at most ${result.max_cost_usd:.4f})"),
        ("daily budget per account", f"${result.daily_budget_usd:.2f}"),
        ("secrets redacted", "yes" if result.redaction else "no"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    if result.mode != "llm":
        err.print("insights are rules-only (MAILPIPE_INSIGHTS=rules, or no MAILPIPE_AI_BASE_URL): no LLM call "
                  "would be made; the figures show what MAILPIPE_INSIGHTS=llm would send")


def _enrich_owed(settings: Settings, account: str | None, as_json: bool) -> None:
    """Resume now the enrichment an AI outage left owed (the beat's sweep does it periodically)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.enrichment import endpoint_wait, resume_owed
    from pipeline.reports import resolve_account
    from tasks.chains import dispatch_stage

    with runtime(settings, workers=True) as rt:
        _announce_workers(rt)
        account_id = resolve_account(rt.engine, account)[0] if account else None

        def resume(tick: Any = None) -> Any:
            return resume_owed(rt.engine, dispatch_stage, account_id=account_id, alive=rt.running_check,
                               endpoint_open=lambda: endpoint_wait(settings, rt.engine), on_tick=tick)

        if as_json:
            result = resume()
        else:
            with Progress(TextColumn("enriching owed windows"), BarColumn(), MofNCompleteColumn(),
                          console=err) as bar:
                task = bar.add_task("", total=None)
                result = resume(lambda total, st: bar.update(
                    task, total=total, completed=st["done"] + st["failed"] + st["skipped"]))
    if as_json:
        _json(result.as_dict())
    elif not result.rounds and not result.owed:
        out.print("no enrichment is owed")
    else:
        out.print(f"resumed {result.resumed} window stage(s) in {result.rounds} round(s): {result.done} done, "
                  f"{result.skipped} skipped, {result.owed} still owed")
    if result.owed:
        err.print(f"[yellow]{result.owed} window stage(s) still owed: {result.reason}. They resume by "
                  "themselves once the endpoint answers (the beat's sweep), or run `mailpipe enrich` again.[/yellow]")
        raise typer.Exit(1)


@app.command()
def reembed(account: str | None = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Re-embed messages lacking chunks of the configured model, then drop the old model's chunks.

    Runs in this process (no worker pool): it is one long job, not a window's stage. It commits every
    few dozen messages, so after Ctrl-C running it again continues where it stopped.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.embeddings.reembed import ReembedProgress, plan
    from pipeline.embeddings.reembed import reembed as run_reembed
    from pipeline.reports import resolve_account
    from pipeline.stages.embed import tools_for

    settings = Settings()
    with runtime(settings) as rt:
        account_id = resolve_account(rt.engine, account)[0] if account else None
        tools = tools_for(settings, rt.engine)
        if tools is None:
            raise ConfigError("MAILPIPE_EMBEDDER is 'none': there is no model to re-embed with")
        before = plan(rt.engine, tools.embedder.name, account_id)
        try:
            if as_json:
                result = run_reembed(rt.engine, tools, account_id=account_id)
            else:
                err.print(f"model {before.model}: {before.messages} message(s) to embed; chunks now "
                          f"{before.chunks_by_model or '{}'}", highlight=False)
                columns = (TextColumn("reembed"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[chunks]} vectors"), TimeRemainingColumn())
                with Progress(*columns, console=err) as bar:
                    task = bar.add_task("reembed", total=before.messages, chunks=0)

                    def tick(p: ReembedProgress) -> None:
                        bar.update(task, total=p.total, completed=p.done, chunks=p.chunks_embedded)

                    result = run_reembed(rt.engine, tools, account_id=account_id, on_progress=tick)
        except KeyboardInterrupt:
            err.print("interrupted; run `mailpipe reembed` again to continue (finished messages are kept)")
            raise typer.Exit(130) from None
        after = plan(rt.engine, tools.embedder.name, account_id)
    if as_json:
        _json({**result.as_dict(), "remaining": after.messages, "chunks_by_model": after.chunks_by_model})
        return
    out.print(f"re-embedded {result.done} message(s) with {result.model}: {result.chunks_embedded} vectors computed, "
              f"{result.old_chunks_deleted} old chunks deleted in {result.seconds:.1f} s; chunks now "
              f"{after.chunks_by_model or '{}'}", highlight=False)


DEMO_ACCOUNT = "me@example.com"


@app.command()
def demo(
    gmail: bool = typer.Option(False, "--gmail", help="Sync the sample through the Gmail API path instead, "
                               "from a Gmail-compatible server started on a free loopback port."),
    as_json: bool = JsonOpt,
) -> None:
    """Import the bundled sample mailbox, then show status, contacts, a search and insights."""
    sample = Path(str(resources.files("pipeline") / "samples" / "sample.mbox"))
    if gmail:
        sync_summary = _demo_gmail(sample, as_json)
        if as_json:
            _json({"sync": sync_summary.as_dict()})
            return
        _print_sync(sync_summary)
    else:
        summary = _do_import(Settings(), sample, DEMO_ACCOUNT, as_json)
        if as_json:
            _json({"import": summary.as_dict()})
            return
        _print_summary(summary)
    status(as_json=False)
    contacts(limit=10, account=DEMO_ACCOUNT, as_json=False)
    search(query="invoice for March", limit=5, sender=None, after=None, before=None, label=None,
           all_messages=False, account=DEMO_ACCOUNT, as_json=False)
    insights(limit=10, needs_reply=False, category=None, account=DEMO_ACCOUNT, as_json=False)
    out.print("\nTry: mailpipe search \"flight to Lisbon\"   mailpipe contacts   mailpipe status --json")


def _demo_gmail(sample: Path, as_json: bool) -> SyncSummary:
    """Serve the sample over Gmail's API on loopback, connect the account to it, and sync."""
    import os

    from pipeline.accounts import connect_account
    from pipeline.credentials import OAuthGrant, TokenCipher, new_key
    from pipeline.testing.gmail_mailbox import FakeMailbox
    from pipeline.testing.gmail_server import GmailServer, QuotaRegime

    with GmailServer(FakeMailbox.from_mbox(DEMO_ACCOUNT, sample), quota=QuotaRegime.legacy()) as server:
        # The worker pool inherits these: it fetches from this server, with this key.
        os.environ["MAILPIPE_GMAIL_API_URL"] = server.base_url
        if not Settings().secret_key:
            os.environ["MAILPIPE_SECRET_KEY"] = new_key()
            err.print("demo: MAILPIPE_SECRET_KEY is unset, so the demo grant is encrypted with a throwaway key")
        settings = Settings()
        grant = OAuthGrant(refresh_token=server.issue_refresh_token(DEMO_ACCOUNT), client_id="mailpipe-demo",
                           client_secret="demo", token_uri=server.token_uri)
        with runtime(settings) as rt:
            connect_account(rt.engine, TokenCipher.from_settings(settings), DEMO_ACCOUNT, grant)
        if not as_json:
            err.print(f"demo Gmail server at {server.base_url} serving {len(server.mailbox(DEMO_ACCOUNT).ids())} "
                      "messages; syncing through the Gmail API path")
        # Its own pool: a running `mailpipe worker` would fetch from Gmail itself, not from this server.
        summary = _do_sync(settings, DEMO_ACCOUNT, "auto", as_json, standing=False)
        stats = server.stats(DEMO_ACCOUNT)
    if not as_json:
        err.print(f"server side: {sum(stats['calls'].values())} calls, {stats['units']} quota units, "
                  f"{len(stats['batch_items'])} batch requests", highlight=False)
    return summary


# ------------------------------------------------------------------ long-running services

PassThrough = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command()
def worker(
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", min=1,
                                           help="Worker processes (default: MAILPIPE_WORKER_CONCURRENCY, or "
                                           "one per core)."),
) -> None:
    """Keep a worker pool running for this data folder until Ctrl-C.

    `mailpipe import`, `sync` and `enrich` started meanwhile hand their work to it instead of booting a
    pool of their own for their length (seconds with the local embedder: torch's import), and start
    one if it stops while they wait. The work follows this pool's settings (embedder, AI endpoint)."""
    import os

    from tasks.runtime import own_pool
    from tasks.workers import standing_lock

    if concurrency is not None:
        os.environ["MAILPIPE_WORKER_CONCURRENCY"] = str(concurrency)  # its children size torch's threads by it
    settings = Settings()
    with runtime(settings) as rt:
        pool = own_pool(settings)
        with standing_lock(settings.home, rt.broker_url, pool.concurrency, pool.log_path) as me:
            pool.start()
            err.print(f"worker pool of {me.concurrency} process(es) running for {settings.home} (pid {me.pid}); "
                      f"log: {me.log_path}; Ctrl-C stops it once its running tasks finish", highlight=False)
            try:
                while True:
                    time.sleep(1.0)
                    pool.check()  # restarted if it died; WorkerPoolError after too many restarts
            except KeyboardInterrupt:
                err.print("stopping the worker pool (running tasks finish first)")
            finally:
                pool.stop()


@app.command(context_settings=PassThrough)
def beat(ctx: typer.Context) -> None:
    """The one scheduler: `celery -A tasks beat` (RedBeat with a Redis broker; extra arguments go to celery).

    Scheduled syncs of every Gmail account, watch renewal, the watchdog, retention, reconciliation and
    the enrichment sweep. Runs in the foreground, as this process (signals reach it directly)."""
    settings = Settings()
    args = ["beat", "-l", "INFO"]
    if not (settings.broker_url or "").startswith(("redis://", "rediss://")):
        # Celery's own scheduler keeps its last-run times in a file: mailpipe's data folder, not the cwd.
        settings.home.mkdir(parents=True, exist_ok=True)
        args += ["-s", str(settings.home / "beat-schedule")]
    _exec_celery([*args, *ctx.args])


@app.command(context_settings=PassThrough)
def flower(ctx: typer.Context) -> None:
    """Flower, Celery's dashboard, with mailpipe's flower.cfg (auth, persistence, limits; see that file).

    `celery -A tasks flower --conf=<packaged flower.cfg>` in the foreground; extra arguments go to Flower."""
    settings = Settings()
    if not (settings.broker_url or "").startswith(("redis://", "rediss://", "amqp://")):
        raise ConfigError("Flower follows workers through task events, which need a Redis (or AMQP) broker: "
                          "set MAILPIPE_BROKER_URL")
    conf = resources.files("tasks") / "flower.cfg"
    _exec_celery(["flower", f"--conf={conf}", *ctx.args])


def _exec_celery(args: list[str]) -> None:
    """Become `celery -A tasks ...`: no parent in between, so SIGTERM and Ctrl-C reach it as they are."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "tasks", *args])


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes (each with its own connections)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request."),
) -> None:
    """Serve the web API: sync triggers, Gmail push, run progress, search, contacts, threads; docs at /docs.

    Triggered syncs are queued on the `sync` queue: run `celery -A tasks worker -Q sync` (and the stage
    workers) to carry them out.
    """
    import contextlib

    import uvicorn

    settings = Settings()
    # Migrated, and the URLs resolved (the embedded database started if none is configured) into the
    # environment, where every server process reads them.
    # uvicorn re-raises the Ctrl-C (or SIGTERM) it shut down on: that is how a server stops, not an error.
    with runtime(settings), contextlib.suppress(KeyboardInterrupt):
        # No lifespan: the app has no startup or shutdown handlers (its resources are made with it).
        uvicorn.run("tasks.web:create_app", factory=True, host=host, port=port, workers=workers,
                    access_log=access_log, log_level="info", lifespan="off")


@app.command()
def migrate(as_json: bool = JsonOpt) -> None:
    """Create or upgrade the schema (every command also does this on start), and cache the figures of the
    finished runs that have none of this version's (workers also do this when they start)."""
    with runtime(Settings()) as rt:
        more = fill_progress_cache(rt.engine)  # None: another process is filling
        where = rt.engine.url.render_as_string(hide_password=True)
    cached = rt.progress_cached + (more or 0)  # an upgrade on start cached them already
    if as_json:
        _json({"database": where, "schema": HEAD_REVISION, "upgraded": rt.upgraded, "runs_cached": cached,
               "another_process_caching": more is None})
        return
    out.print(f"schema {'upgraded to' if rt.upgraded else 'at'} head ({HEAD_REVISION}) on {where}")
    out.print(f"finished runs' progress cached: {cached} runs"
              + ("; another process is caching the rest" if more is None else ""))


if __name__ == "__main__":
    main()
