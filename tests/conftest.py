"""Shared fixtures: offline mode, tiny models built once per session, and a helper that runs the CLI."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub/transformers/datasets: no test may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import tiny_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny_models.build_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return tiny_models.build_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return tiny_models.build_t5(tmp_path_factory.mktemp("models") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    return tiny_models.build_bart(tmp_path_factory.mktemp("models") / "tiny-bart")


# A chat template for the tiny GPT-2: roles as <|role|> markers, an assistant turn closed by the end-of-text token.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if m['role'] == 'assistant' %}"
                 "<|endoftext|>{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="session")
def chat_gpt2(tiny_gpt2, tmp_path_factory) -> Path:
    """The tiny GPT-2 with CHAT_TEMPLATE: chat data (lm, dpo) goes through its template."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("models") / "chat-gpt2"
    shutil.copytree(tiny_gpt2, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


class Result:
    def __init__(self, exit_code: int, stdout: str, stderr: str, output: str):
        self.exit_code, self.stdout, self.stderr, self.output = exit_code, stdout, stderr, output

    def __repr__(self):
        return f"Result(exit_code={self.exit_code}, stderr={self.stderr[-2000:]!r}, stdout={self.stdout[-2000:]!r})"


def invoke(*args) -> Result:
    """Run the real CLI entry point (`ftune.cli.main`, as the console script does) in this process."""
    from ftune.cli import main

    with CliRunner().isolation() as (stdout, stderr, output):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return Result(code, stdout.getvalue().decode(), stderr.getvalue().decode(), output.getvalue().decode())


@pytest.fixture
def ftune():
    """Run the real CLI in this process: ftune("classify", "--data", ...) -> Result."""
    return invoke


def run_cli_subprocess(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m ftune ...` in a fresh process (for start-up checks and multi-process runs)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ftune", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(ROOT))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def held_out_rows(run: Path) -> list[dict]:
    """The rows of a run's JSONL source that its split.json holds out, in split order."""
    split = read_json(Path(run) / "split.json")
    rows = read_jsonl(split["source"])
    return [rows[i] for i in split["indices"]]


def task_recipes(task_name: str) -> dict:
    """Each shipped recipe of a task by name, as (YAML layer, resolved config); checks the header every recipe
    starts with (the command that runs it) and that the recipe resolves (a placeholder where it names no data)."""
    from ftune.cli.recipes import recipes_dir
    from ftune.config import read_yaml_layer, resolve_config
    from ftune.tasks import get_task

    task = get_task(task_name)
    found = {}
    for path in sorted(recipes_dir().glob(f"{task_name}-*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith(f"# ftune {task_name} ") and f"recipes/{path.name}" in lines[0], path
        layer = read_yaml_layer(path)
        config = resolve_config(task.options_class, layers=[(str(path), {"data": "placeholder", **layer})])
        assert config.model, path
        found[path.stem] = (layer, config)
    return found


def train_run(tmp_path_factory, task: str, name: str, *args):
    """A finished `ftune TASK` run in a fresh folder: its path and what it printed."""
    from types import SimpleNamespace

    out = tmp_path_factory.mktemp("runs") / name
    result = invoke(task, "--output-dir", out, *args)
    assert result.exit_code == 0, result
    return SimpleNamespace(path=out, output=result.output, stdout=result.stdout)

