"""The options of `ftune sweep` beyond the task's own: how many trials, which metric, which sampler ...

They come from a recipe's `sweep:` section and from flags (flags win); `params` is the search space (see
ftune.sweep.space). Like the training options, every problem is reported at once, in one line. No Optuna here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ftune.config import coerce, option
from ftune.errors import UsageError

DEFAULT_TRIALS = 10
PANEL = "Sweep"
RECIPE_FILE = "sweep.yaml"      # the sweep's command as a recipe, in its folder


@dataclass
class SweepOptions:
    """How a sweep searches. `params` maps each searched option (flag name) to its SPEC."""

    params: dict[str, Any] = field(default_factory=dict, metadata={"section": True})
    trials: Optional[int] = option(None, f"Trials that finish (complete or pruned; failed ones are replaced) "
                                         f"(default: {DEFAULT_TRIALS}; grid: every combination).", panel=PANEL, min=1)
    metric: Optional[str] = option(None, "Metric to optimise, e.g. eval_accuracy (default: the task's main metric, "
                                         "eval_loss for lm).", panel=PANEL)
    direction: Optional[str] = option(None, "maximize or minimize (default: from the metric).", panel=PANEL,
                                      choices=("maximize", "minimize"))
    sampler: str = option("tpe", "tpe, random, or grid (every combination of the listed choices, in order).",
                          panel=PANEL, choices=("tpe", "random", "grid"))
    pruner: str = option("median", "median (stop a trial whose figure is below the median of finished trials at "
                                   "the same evaluation, from the third trial on) or none.", panel=PANEL,
                         choices=("median", "none"))
    timeout: Optional[float] = option(None, "Start no new trial after this many seconds (running trials finish).",
                                      panel=PANEL, min=0.0, exclusive_min=True)
    jobs: int = option(1, "Trials run at once on this machine (GPUs: one trial per GPU).", panel=PANEL, min=1)
    storage: Optional[str] = option(None, "Optuna storage URL shared by every machine of the sweep, e.g. "
                                          "postgresql://host/db (default: sqlite in the sweep folder, study.db).",
                                    panel=PANEL)
    study_name: Optional[str] = option(None, "Name of the study in --storage, the same on every machine (default: "
                                             "the sweep folder's name).", panel=PANEL)
    keep: str = option("best", "Whose weights to keep: best (the other trials keep everything but the weights) or "
                               "all.", panel=PANEL, choices=("best", "all"))


def sweep_fields() -> list[tuple[dataclasses.Field, Any]]:
    """The options that are flags (all but `params`), with resolved types."""
    hints = typing.get_type_hints(SweepOptions)
    return [(f, hints[f.name]) for f in dataclasses.fields(SweepOptions) if not f.metadata.get("section")]


def resolve_sweep_options(layers: list[tuple[str, dict[str, Any]]]) -> SweepOptions:
    """Merge `layers` (lowest first, each named for messages) over the defaults; raises UsageError listing every
    unknown key and invalid value."""
    fields = {f.name: (f, tp) for f, tp in sweep_fields()}
    values: dict[str, Any] = {"params": {}}
    problems = []
    for layer_name, layer in layers:
        if not isinstance(layer, dict):
            problems.append(f"the sweep section of {layer_name} must be a mapping of sweep options")
            continue
        for key, raw in layer.items():
            name = str(key).replace("-", "_")
            if name == "params":
                if not isinstance(raw, dict):
                    problems.append(f"params in {layer_name} must map options to SPECs (e.g. lr: 1e-5..1e-3:log)")
                else:
                    values["params"].update(raw)
            elif name not in fields:
                known = ", ".join(["params", *fields])
                problems.append(f"unknown sweep key '{key}' in {layer_name} (the keys are: {known})")
            else:
                f, tp = fields[name]
                try:
                    values[name] = coerce(raw, tp, f.metadata)
                except ValueError as exc:
                    problems.append(f"--{name.replace('_', '-')} ({layer_name}): {exc}")
    if problems:
        raise UsageError("invalid sweep options: " + "; ".join(problems))
    return SweepOptions(**values)


def saved_sweep_layers(folder: Path, task_name: str) -> tuple[list, list]:
    """On --resume, the sweep's own sweep.yaml as the lowest layers: (training options, sweep options)."""
    from ftune.config import RUN_INFO_KEY, SWEEP_KEY, read_yaml_layer

    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        return [], []
    saved = read_yaml_layer(path)
    task = (saved.get(RUN_INFO_KEY) or {}).get("task")
    if task and task != task_name:
        raise UsageError(f"--resume would continue the sweep in {folder} with a different command: task (sweep: "
                         f"{task}, now: {task_name}); rerun it as ftune sweep {task} ... --resume, or start a new "
                         "sweep with another --output-dir")
    return [(str(path), saved)], [(str(path), saved.get(SWEEP_KEY) or {})]
