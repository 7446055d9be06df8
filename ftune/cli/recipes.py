"""`ftune recipes`: list the shipped YAML recipes or print one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune import console
from ftune.errors import UsageError


def recipes_dir() -> Path:
    """The recipes folder: the repository's own (source checkout, editable install) or the installed copy."""
    source = Path(__file__).resolve().parents[2] / "recipes"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "ftune" / "recipes"


def recipe_summary(path: Path) -> str:
    """The recipe's first comment line after the command line: what it does."""
    lines = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    prose = [line for line in lines if line and not line.startswith("ftune ")]
    return prose[0] if prose else ""


def recipes(
    name: Annotated[Optional[str], typer.Argument(help="A recipe to print (see the list).")] = None,
) -> None:
    """List the shipped YAML recipes; `ftune recipes NAME` prints one (use it with --config)."""
    folder = recipes_dir()
    found = sorted(folder.glob("*.yaml"))
    if name is None:
        width = max((len(p.stem) for p in found), default=0)
        for path in found:
            console.result(f"{path.stem.ljust(width)}  {recipe_summary(path)}")
        return
    path = folder / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise UsageError(f"no recipe named '{name}'; the recipes are: {', '.join(p.stem for p in found)}")
    console.result(path.read_text())
    if console.stdout_isatty():
        console.note(f"file: {path}")
