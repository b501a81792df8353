"""The web API (`mailpipe serve`): FastAPI on uvicorn. Thin routes over `pipeline/`; see `tasks.web.app`."""

from tasks.web.app import create_app

__all__ = ["create_app"]
