"""The REST baseline: a bare FastAPI app serving fixed JSON on the bridge's paths.

``python -m bench._bare_api TAGS.json SCORE.json`` prints ``PORT <n>`` and serves until
terminated, with the same uvicorn settings as the bridge (one worker, no access log, no
lifespan) and plain ``def`` routes like the bridge's, so only the bridge's own work differs.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI


def create(tags: list[dict[str, Any]], score: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/tags")
    def all_tags() -> list[dict[str, Any]]:
        return tags

    @app.get("/api/v1/models/{name}/score")
    def latest_score(name: str) -> dict[str, Any]:
        return score

    return app


def main() -> None:
    tags = json.loads(Path(sys.argv[1]).read_text())
    score = json.loads(Path(sys.argv[2]).read_text())
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it small responses wait ~40 ms for delayed ACKs (uvicorn binding itself gets this).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(create(tags, score), log_level="warning", lifespan="off", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
