"""The board's web application and its server: `create_app` (the JSON API at /api, the pages, their static files,
the API key) and `serve_board`, which `ftune board` runs.

The server is `ftune serve`'s: the same socket binding (`ftune.serve.server.bind`: the port checked before anything
else, `--port 0` a free one) and the same uvicorn loop (`serve_app`: one ready line, SIGTERM or Ctrl-C stops it
after the requests in flight). With an API key every request, pages and API alike, needs it: the header
`Authorization: Bearer KEY` (scripts), or `?key=KEY` once in a browser, which the board answers with a cookie so
that the page's own requests carry it.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Optional

from ftune import console
from ftune.board.index import BoardError, BoardIndex
from ftune.errors import RunFailed, UsageError

KEY_COOKIE = "ftune_board_key"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
STATIC_FOLDER = Path(__file__).parent / "static"


def create_app(folders: list[Path], *, api_key: Optional[str] = None):
    """The board over `folders` (FastAPI): the API under /api, the pages, /static; `api_key`: required on every
    request."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from ftune.board.api import router as api_router
    from ftune.board.pages import router as pages_router
    from ftune.board.tries import Tries
    from ftune.serve.errors import ApiError, error_body

    app = FastAPI(title="ftune board", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.board = BoardIndex([Path(f) for f in folders])
    app.state.tries = Tries()
    app.include_router(api_router, prefix="/api")
    app.include_router(pages_router)   # before /static: it serves /static/plotly.min.js from the plotly package
    app.mount("/static", StaticFiles(directory=STATIC_FOLDER), name="static")

    @app.exception_handler(BoardError)
    async def board_error(request: Request, exc: BoardError):
        return JSONResponse(error_body(exc.status, str(exc), exc.code), status_code=exc.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return JSONResponse(error_body(404, f"nothing at {request.url.path}; the board's pages start at /",
                                           "not_found"), status_code=404)
        return JSONResponse(error_body(exc.status_code, str(exc.detail), "http_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception):
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        return JSONResponse(error_body(500, message, "internal_error"), status_code=500)

    return KeyCheck(app, api_key) if api_key else app


class KeyCheck:
    """Every HTTP request needs the API key (header, `?key=` or the cookie `?key=` set); a plain ASGI wrapper, so
    it guards the pages, the API and the static files alike. The app stays reachable as `.app`."""

    def __init__(self, app, api_key: str):
        self.app, self.api_key = app, api_key

    @property
    def state(self):
        return self.app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request

        request = Request(scope)
        header = request.headers.get("authorization", "")
        given = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        from_query = request.query_params.get("key")
        candidates = [given, from_query or "", request.cookies.get(KEY_COOKIE, "")]
        if not any(c and hmac.compare_digest(c.encode(), self.api_key.encode()) for c in candidates):
            from fastapi.responses import JSONResponse

            from ftune.serve.errors import error_body

            refusal = JSONResponse(error_body(401, "missing or wrong API key; send the header 'Authorization: Bearer "
                                              "KEY', or open the page once with ?key=KEY", "invalid_api_key"),
                                   status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await refusal(scope, receive, send)
        if from_query and hmac.compare_digest(from_query.encode(), self.api_key.encode()):
            send = _with_cookie(send, self.api_key)
        await self.app(scope, receive, send)


def _with_cookie(send, key: str):
    """`send` that sets the key's cookie on the response (HttpOnly, this site only), so the page's requests carry
    it."""
    async def sending(message):
        if message["type"] == "http.response.start":
            cookie = f"{KEY_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return sending


DEFAULT_FOLDER = Path("runs")


def check_options(folders: Optional[list[Path]], host: str, port: int, api_key: Optional[str]) -> list[Path]:
    """The folders to show (default runs/, which may not exist yet: the page then says how to make a run there);
    UsageError naming every problem with `ftune board`'s options at once."""
    problems = []
    for folder in folders or []:
        if not folder.is_dir():
            problems.append(f"{folder} is not a folder; pass the folders that hold your runs (default runs/)")
    if not 0 <= port <= 65535:
        problems.append(f"--port {port}: must be 0 (a free port) to 65535")
    if api_key is not None and not api_key.strip():
        problems.append("--api-key is empty: give a key, or leave the option (and FTUNE_API_KEY) out")
    elif api_key is None and host not in LOCAL_HOSTS:
        problems.append(f"--host {host} lets other machines read the held-out rows the board shows: pass --api-key "
                        "KEY (or set FTUNE_API_KEY), or bind 127.0.0.1")
    if problems:
        raise UsageError("; ".join(problems))
    return list(folders or [DEFAULT_FOLDER])


def serve_board(folders: Optional[list[Path]], *, host: str, port: int, api_key: Optional[str]) -> None:
    """Serve the board over `folders` (None: runs/) until SIGTERM or Ctrl-C; one line on stdout when it is ready, with
    its URL."""
    import contextlib

    from ftune.serve.server import bind, serve_app

    folders = check_options(folders, host, port, api_key)
    sock = bind(host, port)
    with contextlib.closing(sock):
        app = create_app(folders, api_key=api_key)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        where = ", ".join(map(str, folders))

        def ready() -> None:
            key_hint = "?key=KEY" if api_key else ""
            console.result(f"ftune board: the runs under {where} at http://{shown}:{bound_port}/{key_hint}")

        try:
            started = serve_app(app, sock, ready)
        finally:
            app.state.tries.close()
    if not started:
        raise RunFailed(f"the board did not start on {shown}:{bound_port}; rerun with --debug for uvicorn's messages")
