"""The run directory: claiming it safely, every file ftune writes into it, and reading a finished run back.

A run is finished when `train_results.json` exists: it is written last, after the model, the metrics
and the model card, so an interrupted run never looks finished. While a run trains, `.ftune.lock`
holds the process id, so a second run cannot write into the same folder. Every file name of a run is
defined here, and written by RunDir's methods.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from ftune.config import RUN_INFO_KEY
from ftune.errors import UsageError

CONFIG_FILE = "ftune.yaml"                 # every option as resolved, plus what the run derived
SPLIT_FILE = "split.json"                  # how the held-out split was made, and its rows
TRAIN_RESULTS = "train_results.json"       # written last: the run is finished
FINISHED_MARKER = TRAIN_RESULTS
EVAL_RESULTS = "eval_results.json"
EVAL_PREDICTIONS = "eval_predictions.jsonl"
EVAL_DETAILS = "eval_details.json"
MODEL_CARD = "README.md"
LOCK_FILE = ".ftune.lock"


def checkpoints(path: Path) -> list[Path]:
    found = [p for p in path.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


@dataclass
class RunDir:
    path: Path

    def claim(self, *, resume: bool, overwrite: bool) -> None:
        """Make the folder ours for this run, or raise UsageError saying why it cannot be."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise UsageError(f"--output-dir {path} is a file; pass a folder")
        if path.is_dir():
            self._check_lock()
            entries = [p for p in path.iterdir() if p.name != LOCK_FILE]
            is_run = (path / CONFIG_FILE).is_file()
            if entries and not is_run:
                raise UsageError(f"--output-dir {path} is not empty and holds no ftune run; choose a new or empty "
                                 "folder")
            finished = (path / FINISHED_MARKER).is_file()
            if finished and not overwrite:
                raise UsageError(f"{path} holds a finished run; pass --overwrite to replace it or choose another "
                                 "--output-dir")
            if overwrite and is_run:
                shutil.rmtree(path)
            elif checkpoints(path) and not resume:
                raise UsageError(f"{path} holds an interrupted run with checkpoints; pass --resume to continue it "
                                 "or --overwrite to start over")
        path.mkdir(parents=True, exist_ok=True)
        (path / LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")

    def _check_lock(self) -> None:
        lock = self.path / LOCK_FILE
        if not lock.is_file():
            return
        pid, _, host = lock.read_text().strip().partition(" ")
        if host == socket.gethostname() and pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            raise UsageError(f"{self.path} is in use by a running ftune process (pid {pid}); wait for it or "
                             "choose another --output-dir")

    def release(self) -> None:
        (self.path / LOCK_FILE).unlink(missing_ok=True)

    def last_checkpoint(self) -> Path | None:
        found = checkpoints(self.path)
        return found[-1] if found else None

    def remove_checkpoints(self) -> None:
        """A finished run keeps only its final model: checkpoints are for resuming interrupted runs."""
        for ckpt in checkpoints(self.path):
            shutil.rmtree(ckpt, ignore_errors=True)

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(_dump_json(data) + "\n")
        tmp.replace(target)  # atomic: a reader never sees half a file
        return target

    def write_jsonl(self, name: str, rows: Iterable[dict]) -> Path:
        target = self.path / name
        write_jsonl(target, rows)
        return target

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)
        return target

    # ---- the run's files --------------------------------------------------------------------------
    def write_config(self, task_name: str, config, state: dict[str, Any], precision: str) -> None:
        """ftune.yaml: every option as resolved, and under `run:` what the run derived (labels, versions)."""
        import yaml

        info = {"task": task_name, "precision": precision, "created": datetime.now().isoformat(timespec="seconds"),
                "state": state, "versions": library_versions()}
        body = yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
        tail = yaml.safe_dump({RUN_INFO_KEY: info}, sort_keys=False, allow_unicode=True)
        header = (f"# ftune {task_name} run configuration, resolved. Rerun with:\n"
                  f"#   ftune {task_name} --config {self.path / CONFIG_FILE} --output-dir NEW_DIR\n")
        self.write_text(CONFIG_FILE, header + body + tail)

    def write_split(self, record: dict[str, Any]) -> None:
        self.write_json(SPLIT_FILE, record)

    def write_evaluation(self, evaluation) -> None:
        """eval_results.json, eval_predictions.jsonl and (when the task has them) eval_details.json."""
        self.write_json(EVAL_RESULTS, evaluation.metrics)
        self.write_jsonl(EVAL_PREDICTIONS, evaluation.predictions)
        if evaluation.details:
            self.write_json(EVAL_DETAILS, evaluation.details)

    def write_model_card(self, text: str) -> None:
        self.write_text(MODEL_CARD, text)

    def write_train_results(self, metrics: dict[str, Any]) -> None:
        """Last of all: from now on the run is finished."""
        self.write_json(TRAIN_RESULTS, metrics)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from ftune import __version__

    found = {"ftune": __version__}
    for name in ("torch", "transformers", "accelerate", "datasets", "evaluate", "peft", "tokenizers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_jsonl(target: Path, rows: Iterable[dict]) -> None:
    tmp = target.with_suffix(target.suffix + ".tmp")
    with tmp.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    tmp.replace(target)


def _dump_json(data: Any) -> str:
    """Indented JSON, except that lists of numbers stay on one line (split.json's row indices)."""
    text = json.dumps(data, indent=2, default=_json_default)
    return re.sub(r"\[\s*([-\d.,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text)


def _json_default(value: Any):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------------
# Reading a finished run


@dataclass
class FinishedRun:
    """A run directory read back: its task, its resolved configuration, what it derived, its held-out split."""

    path: Path
    task: Any                   # the Task object (ftune.tasks)
    config: Any                 # TrainConfig, resolved from ftune.yaml
    state: dict[str, Any]       # what the run derived: columns, labels ...
    info: dict[str, Any]        # ftune.yaml's `run:` section
    split: dict[str, Any]       # split.json

    @property
    def is_lora(self) -> bool:
        return (self.path / "adapter_config.json").is_file()

    @property
    def precision(self) -> str:
        return self.info.get("precision", "fp32")


def open_run(path: str | Path) -> FinishedRun:
    """Read a finished run, or raise UsageError naming what is missing."""
    import yaml

    from ftune.config import resolve_config
    from ftune.tasks import get_task

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run {path} does not exist; pass the --output-dir of an ftune training run")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UsageError(f"{path} is not an ftune run (no {CONFIG_FILE}); pass the --output-dir of a training run")
    if not (path / FINISHED_MARKER).is_file():
        raise UsageError(f"run {path} did not finish; resume it with the same training command and --resume")
    saved = yaml.safe_load(config_file.read_text()) or {}
    info = saved.pop(RUN_INFO_KEY, {})
    task = get_task(info.get("task", ""))
    config = resolve_config(task.options_class, layers=[(str(config_file), saved)])
    split_file = path / SPLIT_FILE
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    return FinishedRun(path=path, task=task, config=config, state=info.get("state", {}), info=info, split=split)
