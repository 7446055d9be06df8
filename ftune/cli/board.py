"""`ftune board [DIR ...]`: a local web page over the runs under folders (ftune.board; the serve extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune.cli.common import Debug


def board_command(
    folders: Annotated[Optional[list[Path]], typer.Argument(
        metavar="DIR", show_default=False, help="Folders of runs and sweeps (default: runs/, shown even before it exists).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but 127.0.0.1, localhost or ::1 needs "
                                      "--api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one, printed when ready).")] = 8080,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="FTUNE_API_KEY", show_envvar=True,
                                                   help="Require 'Authorization: Bearer KEY' (or ?key=KEY once in a "
                                                   "browser) on every page and endpoint.")] = None,
    debug: Debug = False,
) -> None:
    """A local, read-only web page over runs: the runs table, a run's figures, its held-out rows and errors,
    two runs compared row by row, sweeps, and a box to try a run."""
    from ftune.errors import UsageError

    try:
        import fastapi  # noqa: F401 — the extra's packages, checked before anything else
        import uvicorn  # noqa: F401

        from ftune.board.server import serve_board
    except ImportError as exc:
        raise UsageError(f"ftune board needs the serve extra ({exc.name} is missing): pip install 'ftune[serve]'"
                         ) from None
    serve_board(folders or None, host=host, port=port, api_key=api_key)
