"""The command line itself: fast start-up, version, recipes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "peft", "datasets", "evaluate", "accelerate", "matplotlib", "tensorboard",
         "seqeval", "sacrebleu", "optuna")


@pytest.mark.parametrize("argv", [["--help"], ["classify", "--help"], ["ner", "--help"], ["translate", "--help"],
                                  ["sweep", "classify", "--help"], ["runs", "--help"], ["eval", "--help"],
                                  ["recipes"]])
def test_help_imports_no_heavy_library(argv):
    code = ("import sys\nfrom ftune.cli import app\n"
            f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_version(ftune):
    from ftune import __version__

    result = ftune("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"ftune {__version__}"


def test_every_command_is_listed(ftune):
    result = ftune("--help")
    for command in ("classify", "eval", "predict", "merge", "recipes"):
        assert command in result.stdout


def test_recipes_list_and_show(ftune):
    listing = ftune("recipes")
    assert listing.exit_code == 0 and "classify-bert-base" in listing.stdout
    shown = ftune("recipes", "classify-bert-base")
    assert shown.exit_code == 0 and shown.stdout.startswith("# ftune classify")
    missing = ftune("recipes", "nope")
    assert missing.exit_code == 2 and "classify-bert-base" in missing.stderr


def _recipes():
    return sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: p.stem)
def test_every_recipe_is_valid(path):
    """Each recipe starts with the command that runs it and resolves against its task's config class."""
    from ftune.config import resolve_config
    from ftune.tasks import TASK_MODULES, get_task

    first = path.read_text().splitlines()[0]
    assert first.startswith("# ftune "), first
    words = first.split()
    sweep = words[2] == "sweep"  # `ftune sweep TASK` recipes hold a `sweep:` section too
    task = words[3] if sweep else words[2]
    assert task in TASK_MODULES, f"{path.name} names unknown command {task}"
    layer = yaml.safe_load(path.read_text())
    layer.setdefault("data", "placeholder")  # recipes may leave --data to the command line
    config = resolve_config(get_task(task).options_class, layers=[(path.name, layer)])
    assert config.data
    if sweep:
        from ftune.sweep.options import resolve_sweep_options
        from ftune.sweep.space import build_space

        options = resolve_sweep_options([(path.name, layer["sweep"])])
        assert build_space(get_task(task).options_class, options.params)
