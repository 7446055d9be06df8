"""The `ftune` command line. Nothing heavy is imported here: commands import torch and friends when run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ftune import __version__
from ftune.cli import run_commands
from ftune.cli.generate import generate_command
from ftune.cli.recipes import recipes
from ftune.cli.train_commands import make_train_command
from ftune.tasks import TASKS

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
        typer.echo(f"ftune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = False,
) -> None:
    """Fine-tune Hugging Face models from the command line."""


for _entry in TASKS.values():
    app.command(_entry.name, rich_help_panel="Train")(make_train_command(_entry))
run_commands.register(app)
app.command("generate", rich_help_panel="Use a run")(generate_command)
app.command("recipes", rich_help_panel="Recipes")(recipes)


def main() -> None:
    app()
