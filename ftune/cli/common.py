"""What every command shares: the error boundary and the option aliases used by more than one command.

Errors become one line in one place. `guarded` wraps every command when it is registered: bad input
(UsageError) is `error: ...` and exit code 2, an interrupt says how to resume (130; a training command stopped
by SIGINT, SIGTERM or SIGUSR1 first saves a checkpoint and exits 130, 143 or 138: ftune.signals), anything else
is one line and exit code 1 — with `--debug`, the traceback instead. `ftune.cli.main` turns the parser's own usage
errors (an unknown flag, a value of the wrong type) into the same one line.

`guarded` also sets how the command reports (ftune.console.session) from its `--quiet` and `--log-format`
options. They are options of each command that prints progress (the training commands and `ftune eval`), as
`--debug` is, so they go at the end of the command line one already has; commands whose output is a result
(predict, generate, runs, push ...) do not take them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ftune import console
from ftune.errors import RunFailed, RunInterrupted, UsageError

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library warnings.")]
RunArg = Annotated[Path, typer.Argument(help="A run directory written by an ftune training command.")]


class LogFormat(str, Enum):
    text = "text"
    json = "json"


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors, warnings and the final table.")]
LogFormatOption = Annotated[LogFormat, typer.Option(
    "--log-format", help="text: bars on a terminal, plain lines elsewhere; json: one JSON object per event on "
    "stdout (start, step, eval, end, note, warning).")]

INTERRUPTED = 130


def environment_defaults(options_class) -> list:
    """The configuration layers the environment sets (ftune.config.ENVIRONMENT_DEFAULTS), lowest of all; a note
    says which default each one changes."""
    from ftune.config import environment_layers

    layers, notes = environment_layers(options_class)
    for text in notes:
        console.note(text)
    return layers


def guarded(command, *, stops_on_signals: bool = False):
    """The command, with its failures reported as one `error:` line and ftune's exit codes. `stops_on_signals`: a
    command that trains, which SIGINT, SIGTERM and SIGUSR1 stop after a checkpoint (ftune.signals)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        debug = bool(kwargs.get("debug"))
        set_debug(debug)
        log_format = kwargs.get("log_format") or LogFormat.text
        with console.session(quiet=bool(kwargs.get("quiet")), log_format=LogFormat(log_format).value):
            try:
                with _signal_handling(stops_on_signals):
                    return command(*args, **kwargs)
            except typer.Exit:
                raise
            except BaseException as exc:  # noqa: BLE001 — the boundary where failures become one line
                if isinstance(exc, SystemExit) or debug and not isinstance(exc, RunInterrupted):
                    raise
                if debug:  # where it stopped, and still the exit code that says how (130, 143, 138)
                    traceback.print_exc()
                raise typer.Exit(report(exc)) from None

    return run


def _signal_handling(stops_on_signals: bool):
    if not stops_on_signals:
        return contextlib.nullcontext()
    from ftune.signals import stop_on_signals

    return stop_on_signals()


def report(exc: BaseException) -> int:
    """Print the one line for `exc` and return the exit code."""
    if isinstance(exc, (UsageError, RunFailed, RunInterrupted)):
        console.error(str(exc))
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        console.error("interrupted; rerun the same command with --resume to continue from the last checkpoint")
        return INTERRUPTED
    text = " ".join(str(exc).split()) or type(exc).__name__
    console.error(f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)")
    return 1


def set_debug(debug: bool) -> None:
    """--debug shows tracebacks and the libraries' own logging; without it ftune keeps their chatter away."""
    if debug:
        os.environ["FTUNE_DEBUG"] = "1"
        return
    os.environ.pop("FTUNE_DEBUG", None)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Loading-weights, download and datasets' map bars: ftune reports its phases itself (ftune.console).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import sys
    import warnings

    warnings.filterwarnings("ignore", append=True)  # last: filters set before (-W, PYTHONWARNINGS, pytest's) apply
    if "transformers" in sys.modules:  # already imported (e.g. in a test process): tell it directly
        sys.modules["transformers"].utils.logging.set_verbosity_error()
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
