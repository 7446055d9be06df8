"""`ftune runs [DIR]` and `ftune runs compare RUN RUN...`: the runs under a folder, and runs side by side.

A run folder is one ftune created (its `.ftune-run` marker) or, for runs written before the marker existed, a folder
holding ftune.yaml and train_results.json. Runs are found up to `MAX_DEPTH` folders below DIR (sweeps keep their
trials one level down); ftune does not look inside a run, nor into hidden folders. A run's status:
- finished: train_results.json, written last, is there;
- in use: a live ftune process holds the run's lock (it is training or resuming);
- replacing: finished, and a running `--overwrite` trains its replacement in the staging folder beside it
  (`finished, replacement stopped` when that staging folder's process is gone);
- interrupted: none of these; the same command with --resume continues it.
Staging folders themselves are not listed: they are the run they replace.

Only small files are read (ftune.yaml and the JSON results): no torch, quick on many runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from ftune import console
from ftune.errors import UsageError
from ftune.folders import CONFIG_FILE, FINISHED_FILE, RUN_MARKER, is_run_folder, lock_holder, staging_path
from ftune.rundir import EVAL_RESULTS, SPLIT_FILE

MAX_DEPTH = 4
BEST_SO_FAR = Path("best-model") / "best.json"   # the best evaluation of a run still training (ftune.trainers)
# Metrics where lower is better, by a word in their name; any other metric sorts highest first.
LOWER_IS_BETTER = ("loss", "perplexity", "mse", "mae")
# ftune.yaml keys that differ between any two runs without saying anything about how they differ.
NOT_COMPARED = ("output_dir", "run.created")


@dataclass
class RunSummary:
    """One run as `ftune runs` shows it."""

    path: str
    name: str
    task: Optional[str]
    model: Optional[str]            # as given to --model, --data (the table shows a local path by its last part)
    method: Optional[str]           # "full" or "LoRA"
    data: Optional[str]
    held_out_rows: Optional[int]
    main_metric: Optional[str]      # e.g. "eval_accuracy"
    value: Optional[float]          # the main metric: held-out figure, or the best so far of an unfinished run
    train_seconds: Optional[float]
    created: Optional[str]          # ISO time
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_run(folder: Path) -> bool:
    """A run folder of ftune's, also one written before the marker existed."""
    return is_run_folder(folder) or ((folder / CONFIG_FILE).is_file() and (folder / FINISHED_FILE).is_file())


def find_runs(root: Path) -> list[Path]:
    """Run folders at or below `root` (up to MAX_DEPTH levels), not looking inside runs or hidden folders."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if is_run(folder):
            found.append(folder)
            return
        if depth >= MAX_DEPTH:
            return
        try:
            children = sorted(folder.iterdir())
        except OSError:
            return  # unreadable: nothing of ours to show there
        for child in children:
            if not child.name.startswith(".") and child.is_dir() and not child.is_symlink():
                walk(child, depth + 1)

    walk(Path(root), 0)
    return found


def run_status(path: Path) -> str:
    if lock_holder(path):
        return "in use"
    if not (path / FINISHED_FILE).is_file():
        return "interrupted"
    staging = staging_path(path.resolve())  # built beside the real folder when `path` is a link
    if staging.is_dir() and is_run_folder(staging):
        return "replacing" if lock_holder(staging) else "finished, replacement stopped"
    return "finished"


def read_run(path: Path, root: Optional[Path] = None) -> RunSummary:
    """What ftune.yaml and the results of the run at `path` say; what is missing stays None."""
    saved = read_yaml_object(path / CONFIG_FILE)
    info = saved.pop("run", None) or {}
    results = read_json_object(path / EVAL_RESULTS)
    train = read_json_object(path / FINISHED_FILE)
    split = read_json_object(path / SPLIT_FILE)
    metric = _main_metric(info.get("task"), saved)
    value = results.get(metric) if metric else None
    if value is None and metric:
        value = read_json_object(path / BEST_SO_FAR).get("metric")
    lora = saved.get("lora")
    return RunSummary(
        path=str(path), name=_name(path, root), task=info.get("task"), model=saved.get("model"),
        method=None if lora is None else ("LoRA" if lora else "full"), data=saved.get("data"),
        held_out_rows=split.get("rows"), main_metric=metric, value=value,
        train_seconds=train.get("wall_seconds", train.get("train_runtime")),
        created=info.get("created") or _marker_time(path), status=run_status(path),
        metrics={k: v for k, v in results.items() if isinstance(v, (int, float))})


def _main_metric(task_name: Optional[str], saved: dict[str, Any]) -> Optional[str]:
    """The metric that picks the run's best checkpoint, "eval_"-prefixed (None for a task this ftune lacks)."""
    from ftune.config import resolve_config
    from ftune.tasks import get_task

    if not task_name:
        return None
    try:
        task = get_task(task_name)
    except UsageError:
        return None
    try:
        name, _ = task.best_metric(resolve_config(task.options_class, layers=[(CONFIG_FILE, saved)]))
    except UsageError:  # written by another version of ftune: the task's usual metric
        name = task.main_metric
    return f"eval_{name}"


def _name(path: Path, root: Optional[Path]) -> str:
    if root is not None:
        try:
            relative = path.resolve().relative_to(Path(root).resolve())
            return relative.as_posix() if relative.parts else path.resolve().name
        except ValueError:
            pass
    return str(path)


def _short(value: Optional[str]) -> Optional[str]:
    """A model or data source as a person names it: a local path by its last part, a Hub id as it is."""
    if not value:
        return value
    path = Path(value).expanduser()
    if path.exists() or value.startswith(("/", ".", "~")):
        return path.name or value
    return value


def _marker_time(path: Path) -> Optional[str]:
    created = read_json_object(path / RUN_MARKER).get("created")
    if created:
        return created
    try:
        return datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
    except OSError:
        return None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in a run's file, or {} when the file is missing, unreadable or holds something else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):   # ValueError: not JSON, or not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def read_yaml_object(path: Path) -> dict[str, Any]:
    """The mapping in a run's YAML file (ftune.yaml), or {} when the file is missing, unreadable or holds something
    else."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------------
# ftune runs [DIR]


def metric_key(name: str) -> str:
    """"f1" and "eval_f1" name the same figure; train_* figures keep their own prefix."""
    return name if name.startswith(("eval_", "train_")) else f"eval_{name}"


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def list_runs(root: Path, sort: Optional[str] = None) -> list[RunSummary]:
    """The runs under `root`, oldest first, or best first by the metric `sort`."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; pass the folder that holds your runs (ftune runs DIR)")
    runs = sorted((read_run(p, root) for p in find_runs(root)), key=lambda r: (r.created or "", r.name))
    if sort is None:
        return runs
    key = metric_key(sort)
    scored = [r for r in runs if isinstance(r.metrics.get(key), (int, float))]
    if runs and not scored:
        known = sorted({k for r in runs for k in r.metrics})
        raise UsageError(f"no run under {root} has the metric {key}; the metrics are: {', '.join(known) or 'none'}")
    scored.sort(key=lambda r: r.metrics[key], reverse=not lower_is_better(key))
    return scored + [r for r in runs if r not in scored]


def runs_table(runs: list[RunSummary], root: Path, sort: Optional[str] = None) -> str:
    header = ["run", "task", "model", "method", "data", "held-out", "metric", "value"]
    key = metric_key(sort) if sort else None
    if key:
        header.append(key.removeprefix("eval_"))
    header += ["train time", "created", "status"]
    rows = []
    for run in runs:
        row = [run.name, run.task or "?", _short(run.model) or "?", run.method or "?", _short(run.data) or "?",
               _cell(run.held_out_rows), (run.main_metric or "-").removeprefix("eval_"), _cell(run.value)]
        if key:
            row.append(_cell(run.metrics.get(key)))
        row += [console.format_seconds(run.train_seconds) if run.train_seconds is not None else "-",
                _when(run.created), run.status]
        rows.append(row)
    order = f", best {key.removeprefix('eval_')} first" if key else ", oldest first"
    return console.table(header, rows, title=f"{len(runs)} run{'s' * (len(runs) != 1)} under {root}{order}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return console.format_value(value)


def _when(created: Optional[str]) -> str:
    if not created:
        return "-"
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return created


# --------------------------------------------------------------------------------------------------
# ftune runs compare RUN RUN...


@dataclass
class Comparison:
    """Runs side by side: each figure and each differing ftune.yaml key, one value per run (None: absent)."""

    runs: list[str]
    metrics: dict[str, list[Any]]
    config_differences: dict[str, list[Any]]


def compare_runs(paths: list[str]) -> Comparison:
    if len(paths) < 2:
        raise UsageError("ftune runs compare needs two runs or more: ftune runs compare RUN RUN...")
    folders = [Path(p) for p in paths]
    for folder in folders:
        if not (folder / CONFIG_FILE).is_file():
            raise UsageError(f"{folder} is not an ftune run (no {CONFIG_FILE}); pass run folders (ftune runs lists "
                             "them)")
    summaries = [read_run(f) for f in folders]
    figures: dict[str, list[Any]] = {"status": [s.status for s in summaries]}
    for name in dict.fromkeys(k for s in summaries for k in s.metrics):
        figures[name] = [s.metrics.get(name) for s in summaries]
    trains = [read_json_object(f / FINISHED_FILE) for f in folders]
    figures["train_loss"] = [t.get("train_loss") for t in trains]
    figures["train time"] = [s.train_seconds for s in summaries]
    configs = [flat_config(f) for f in folders]
    keys = dict.fromkeys(k for c in configs for k in c if k not in NOT_COMPARED)
    differing = {k: [c.get(k, _ABSENT) for c in configs] for k in keys
                 if len({json.dumps(c.get(k, _ABSENT), sort_keys=True, default=str) for c in configs}) > 1}
    return Comparison(runs=[str(p) for p in paths], metrics=figures, config_differences=differing)


_ABSENT = "(absent)"  # a key one run's ftune.yaml lacks (written by another version of ftune)


def flat_config(folder: Path) -> dict[str, Any]:
    """ftune.yaml as flat keys: the options as they are, the `run:` section as run.task, run.state.labels ..."""
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    add("", read_yaml_object(folder / CONFIG_FILE))
    return flat


def comparison_text(comparison: Comparison) -> str:
    names = comparison.runs
    metrics = console.table(["metric", *names], [
        [name, *(_compared(name, v) for v in values)] for name, values in comparison.metrics.items()])
    if not comparison.config_differences:
        return metrics + "\n\nno config keys differ (ftune.yaml)"
    config = console.table(["config key", *names], [
        [key, *(_yaml_value(v) for v in values)] for key, values in comparison.config_differences.items()],
        title="config keys that differ (ftune.yaml)")
    return metrics + "\n\n" + config


def _compared(name: str, value: Any) -> str:
    if name == "train time":
        return console.format_seconds(value) if value is not None else "-"
    return _cell(value)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_yaml_value(v) for v in value) or "[]"
    return str(value)
