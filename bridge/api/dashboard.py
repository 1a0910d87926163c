"""The local dashboard: static files (``bridge/static``) served at ``/`` next to the API.

Plain HTML, CSS and JavaScript with the chart drawn on a ``<canvas>``: no CDN, no build step,
nothing to download on a box that is often offline. The page reads the same /api/v1 endpoints
as SCADA does, so it shows nothing the API would not, and a configured API token is asked for
by the page (kept in the browser tab's sessionStorage only).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

__all__ = ["STATIC_DIR", "mount_dashboard"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Security headers for the dashboard's files; the API's JSON is not affected.
_HEADERS = {
    "content-security-policy":
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard's files at ``/`` and ``/<file>``.

    Explicit one-segment routes rather than a mount at ``/``: a catch-all mount would answer
    every path no route matched, including a wrong method on an API route (404 instead of
    405) and any /api/v1 typo. Only the files shipped in ``bridge/static`` are served; the
    names are read once, so nothing outside that folder can ever be reached.
    """
    files = {path.name: path for path in STATIC_DIR.iterdir() if path.is_file()}

    def serve(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise HTTPException(404, "Not Found")
        return FileResponse(path, headers=_HEADERS)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return serve("index.html")

    @app.get("/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        return serve(name)
