"""The run directory: claiming it safely, every file ftune writes into it, and reading a finished run back.

A run is finished when `train_results.json` exists: it is written last, after the model, the metrics
and the model card, so an interrupted run never looks finished. Every file name of a run is defined here
(or in ftune.folders: the markers and the lock), and written by RunDir's methods.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Optional

from ftune.config import RUN_INFO_KEY
from ftune.errors import UsageError
from ftune.folders import CONFIG_FILE, FINISHED_FILE, checkpoints

SPLIT_FILE = "split.json"                  # how the held-out split was made, and its rows
TRAIN_RESULTS = FINISHED_FILE              # written last: the run is finished
EVAL_RESULTS = "eval_results.json"
EVAL_PREDICTIONS = "eval_predictions.jsonl"
EVAL_DETAILS = "eval_details.json"
MODEL_CARD = "README.md"
EXPORT_FILE = "export.json"                # an export of the run (ftune export): what it holds, how it was verified
LOGS_FOLDER = "logs"                       # the experiment trackers' files (--report-to)
# What to do about a run file that is not as ftune writes it.
CHANGED = "ftune does not write such a file, so the run was changed after training: restore its {name} or retrain it"


@dataclass
class RunDir:
    """A folder ftune writes a run's files into (the run itself, its staging folder, or an evaluation folder)."""

    path: Path

    def remove_checkpoints(self) -> None:
        """A finished run keeps only its final model: checkpoints (and the best model kept while training) are for
        resuming interrupted runs."""
        for checkpoint in checkpoints(self.path):
            shutil.rmtree(checkpoint, ignore_errors=True)
        for folder in ("best-model", "best-model.tmp"):
            shutil.rmtree(self.path / folder, ignore_errors=True)

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(dumped_json(data) + "\n")
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
    def write_config(self, task_name: str, config, state, precision: str, location: Optional[Path] = None) -> None:
        """ftune.yaml: every option as resolved, and under `run:` what the run derived (the task's state, a
        ftune.tasks.state.TaskState) and the library versions.
        `location`: where the run will live when it is finished (a staged run is written elsewhere first)."""
        import yaml

        info = {"task": task_name, "precision": precision, "created": datetime.now().isoformat(timespec="seconds"),
                "state": state.to_dict(), "versions": library_versions()}
        body = yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
        tail = yaml.safe_dump({RUN_INFO_KEY: info}, sort_keys=False, allow_unicode=True)
        header = (f"# ftune {task_name} run configuration, resolved. Rerun with:\n"
                  f"#   ftune {task_name} --config {(location or self.path) / CONFIG_FILE} --output-dir NEW_DIR\n")
        self.write_text(CONFIG_FILE, header + body + tail)

    def write_split(self, record: dict[str, Any]) -> None:
        self.write_json(SPLIT_FILE, record)

    def write_evaluation(self, evaluation) -> None:
        """eval_results.json, eval_predictions.jsonl and (when the task has them) eval_details.json."""
        self.write_json(EVAL_RESULTS, evaluation.metrics)
        self.write_jsonl(EVAL_PREDICTIONS, evaluation.predictions)
        if evaluation.details:
            self.write_json(EVAL_DETAILS, evaluation.details)

    def write_picture(self, name: str, figure) -> Path:
        """A matplotlib Figure as a PNG (learning_curves.png, confusion_matrix.png, ...)."""
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        try:
            figure.savefig(tmp, format="png")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        return target

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


def dumped_json(data: Any) -> str:
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


# --------------------------------------------------------------------------------------------------
# Reading a finished run


@dataclass
class FinishedRun:
    """A run directory read back: its task, its resolved configuration, what it derived, its held-out split."""

    path: Path
    task: Any                   # the Task object (ftune.tasks)
    config: Any                 # TrainConfig, resolved from ftune.yaml
    state: Any                  # what the run derived: the task's state_class (columns, labels ...)
    info: dict[str, Any]        # ftune.yaml's `run:` section
    split: dict[str, Any]       # split.json
    export: Optional[dict[str, Any]] = None  # export.json, when this is an export of the run (ftune export)

    @property
    def engine(self) -> str:
        """What scores the model (ftune.engines): transformers for a run, the export's own runtime for an export."""
        return self.export.get("engine", "transformers") if self.export else "transformers"

    @property
    def is_lora(self) -> bool:
        return (self.path / "adapter_config.json").is_file()

    @property
    def precision(self) -> str:
        return self.info.get("precision", "fp32")


def open_run(path: str | Path, *, exports: bool = False) -> FinishedRun:
    """Read a finished run, or raise UsageError naming what is missing or damaged. `exports`: an export folder of a
    run (ftune export) is read too, as the run it was made from with its `export` record."""
    from ftune.config import read_yaml_file, resolve_config
    from ftune.tasks import get_task

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run {path} does not exist; pass the --output-dir of an ftune training run")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UsageError(f"{path} is not an ftune run (no {CONFIG_FILE}); pass the --output-dir of a training run")
    export = _export_record(path, exports)
    if export is None and not (path / TRAIN_RESULTS).is_file():
        raise UsageError(f"run {path} did not finish; resume it with the same training command and --resume")
    saved = read_yaml_file(config_file, "run file", fix=CHANGED.format(name=CONFIG_FILE)) or {}
    info = saved.pop(RUN_INFO_KEY, {}) if isinstance(saved, dict) else {}
    if not info.get("task"):
        raise UsageError(f"{config_file} is not the configuration of an ftune run (no run: task); pass the "
                         "--output-dir of a training run")
    task = get_task(info["task"])
    config = resolve_config(task.options_class, layers=[(str(config_file), saved)])
    state = read_state(task, info, config_file)
    split_file = path / SPLIT_FILE
    try:
        split = json.loads(split_file.read_text(encoding="utf-8")) if split_file.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"run file {split_file} is not valid JSON ({exc}); {CHANGED.format(name=SPLIT_FILE)}"
                         ) from None
    return FinishedRun(path=path, task=task, config=config, state=state, info=info, split=split, export=export)


def read_state(task, info: dict[str, Any], config_file: Path):
    """The task's state saved in ftune.yaml's `run:` section (`info`); UsageError when it cannot be read."""
    try:
        return task.state_class.from_dict(info.get("state", {}))
    except ValueError as exc:
        raise UsageError(f"run file {config_file} holds a {task.name} state that ftune cannot read ({exc}); "
                         f"{CHANGED.format(name=CONFIG_FILE)}") from None


def _export_record(path: Path, accepted: bool) -> Optional[dict[str, Any]]:
    """The export.json of an export folder (None for a run); UsageError where the command takes runs only."""
    record_file = path / EXPORT_FILE
    if not record_file.is_file():
        return None
    if not accepted:
        raise UsageError(f"{path} is an export of a run (ftune export); this command takes the run itself")
    try:
        return json.loads(record_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"export file {record_file} is not valid JSON ({exc}); export the run again") from None
