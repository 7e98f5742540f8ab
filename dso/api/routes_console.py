"""The web console: a static page at ``/`` (plain HTML, CSS and ES modules shipped in ``dso/api/static``).

No build server at run time: the browser code is served as files. The page reads
the same JSON endpoints as any client (``/v1/...``, ``/readyz``), so it obeys the same
auth rules: when reads need a token, the page asks for one and sends it as a bearer
header. The static files themselves are open, like ``/docs``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_PATH = "/console"  # where the page's scripts, styles and vendored libraries are served

router = APIRouter(include_in_schema=False)


@router.get("/")
def console_page() -> FileResponse:
    # no-cache: a new release's page must pick up its own assets
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def attach(app: FastAPI) -> None:
    """Serve the console's static assets under ``/console`` (create_app calls this)."""
    if not (STATIC_DIR / "index.html").is_file():
        raise RuntimeError(f"the console's files are missing from {STATIC_DIR} (broken install?)")
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="console")
