"""What every command shares: error reporting and the option aliases used by more than one command."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune.errors import UsageError

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library warnings.")]
RunArg = Annotated[Path, typer.Argument(help="A run directory written by an ftune training command.")]
OutputDirOpt = Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Where to write (default: the run).")]


@contextlib.contextmanager
def reported_errors(debug: bool):
    """Turn exceptions into one `error:` line on stderr and ftune's exit codes (2 bad input, 1 failure)."""
    if debug:
        os.environ["FTUNE_DEBUG"] = "1"
    else:
        os.environ.pop("FTUNE_DEBUG", None)
        _quiet_libraries()
    try:
        yield
    except UsageError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted; rerun the same command with --resume to continue from the last "
                   "checkpoint", err=True)
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 — the boundary where failures become one line
        if debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        typer.echo(f"error: {type(exc).__name__}: {text} (rerun with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None


def _quiet_libraries() -> None:
    """Keep library chatter (advisory warnings, per-weight load reports) off the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore")


def echo_err(message: str) -> None:
    typer.echo(message, err=True)


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch): the process that prints and writes the run directory."""
    return os.environ.get("RANK", "0") == "0"


def stdout_isatty() -> bool:
    return sys.stdout.isatty()
