"""The `ftune` command line. Nothing heavy is imported here: commands import torch and friends when run.

Every command is registered below, in one place, wrapped in the one error boundary (`guarded`); `main` is the
console script and turns the parser's own usage errors into the same one `error:` line.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Optional, Sequence

import typer

from ftune import __version__, console
from ftune.cli.board import board_command
from ftune.cli.common import guarded, set_debug
from ftune.cli.export import export_command
from ftune.cli.generate import generate_command
from ftune.cli.recipes import recipes
from ftune.cli.run_commands import eval_command, make_predict_command, merge_command
from ftune.cli.runs import push_command, runs_command
from ftune.cli.serve import serve_command
from ftune.cli.sweep import make_sweep_app
from ftune.cli.train_commands import make_train_command
from ftune.cpu import process_speedups
from ftune.tasks import all_tasks

app = typer.Typer(
    name="ftune",
    help="Fine-tune Hugging Face models: classification, causal LM, extractive QA, summarisation; full or LoRA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.result(f"ftune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Fine-tune Hugging Face models from the command line."""


_TASKS = all_tasks()
COMMANDS = [
    *((task.name, make_train_command(task), "Train") for task in _TASKS),
    ("sweep", make_sweep_app(_TASKS), "Train"),
    ("eval", eval_command, "Use a run"),
    ("predict", make_predict_command(_TASKS), "Use a run"),
    ("generate", generate_command, "Use a run"),
    ("merge", merge_command, "Use a run"),
    ("serve", serve_command, "Use a run"),
    ("export", export_command, "Use a run"),
    ("runs", runs_command, "Runs"),
    ("push", push_command, "Runs"),
    ("board", board_command, "Runs"),
    ("recipes", recipes, "Recipes"),
]
for _name, _function, _panel in COMMANDS:
    if isinstance(_function, typer.Typer):  # a group of commands (it guards its own)
        app.add_typer(_function, name=_name, rich_help_panel=_panel)
    else:  # the training commands save a checkpoint when a signal stops them (ftune.signals)
        app.command(_name, rich_help_panel=_panel)(guarded(_function, stops_on_signals=_panel == "Train"))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The `ftune` console script: run the command, exit with its code (0 ok, 2 bad input, 1 failure)."""
    args = list(sys.argv[1:] if argv is None else argv)
    set_debug("--debug" in args)
    # A whole process (not a call from Python): the CPU door's process-wide settings (ftune.cpu).
    with process_speedups(args) if argv is None else contextlib.nullcontext():
        try:
            code = app(args=args, prog_name="ftune", standalone_mode=False)
        except typer.TyperException as exc:  # the parser's usage errors: unknown option, bad value ...
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # `ftune` alone, or a command group without its command: the help page
                sys.exit(0)
            context = getattr(exc, "ctx", None)
            where = f"; see '{context.command_path} --help'" if context is not None else ""
            message = " ".join(exc.format_message().split())
            console.error(f"{message[0].lower()}{message[1:]}{where}" if message else f"bad usage{where}")
            sys.exit(getattr(exc, "exit_code", 2) or 2)
        except typer.Abort:
            console.error("aborted")
            sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
