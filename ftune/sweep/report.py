"""What a sweep writes about its trials: `trials.jsonl`, `best.yaml`, the table it prints and `sweep.png`.

Everything here is made from the study (the trials' states, parameters and values) and the trial folders of this
machine (training time, weights); it is rewritten whole after every trial, atomically, so a reader — or a sweep
killed at any moment — never sees half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ftune import console
from ftune.console import table
from ftune.rundir import write_jsonl
from ftune.sweep.space import Param, format_value
from ftune.sweep.study import FAILURE_KEY, PRUNED_AT_KEY, SURPLUS_KEY, WORKER_KEY, waits_to_continue
from ftune.sweep.trial_runs import has_weights, train_runtime, trial_folder

TRIALS_FILE = "trials.jsonl"
BEST_FILE = "best.yaml"
PICTURE = "sweep.png"
STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


def trial_rows(trials: list, sweep_dir: Path, space: list[Param]) -> list[dict[str, Any]]:
    """One object per finished trial (complete, pruned or failed) and per interrupted one (stopped by a signal,
    to be continued by --resume), by number: what trials.jsonl holds."""
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        state = "interrupted" if waits_to_continue(trial) else STATE_NAMES.get(trial.state.name)
        if state is None or trial.user_attrs.get(SURPLUS_KEY):
            continue
        folder = trial_folder(sweep_dir, trial.number)
        row = {"number": trial.number, "state": state,
               "params": {p.key: trial.params[p.key] for p in space if p.key in trial.params},
               "value": trial.value, "run": folder.name, "train_runtime": train_runtime(folder),
               "host": (trial.user_attrs.get(WORKER_KEY) or {}).get("host"),
               "weights": has_weights(folder) if folder.is_dir() else None}
        if state == "pruned":
            row["pruned_at_evaluation"] = trial.user_attrs.get(PRUNED_AT_KEY)
        if state == "failed":
            row["error"] = trial.user_attrs.get(FAILURE_KEY, "interrupted")
        rows.append(row)
    return rows


def write_trials(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_jsonl(Path(sweep_dir) / TRIALS_FILE, rows)


def best_recipe(task_name: str, options: dict[str, Any], sweep_dir: Path, number: int, metric: str,
                value: float) -> str:
    """best.yaml: the best trial's whole configuration as a recipe (the folder left to the command line)."""
    import yaml

    options = {k: v for k, v in options.items() if k != "output_dir"}
    path = Path(sweep_dir) / BEST_FILE
    header = (f"# ftune {task_name} --config {path} --output-dir NEW_DIR\n"
              f"# The best trial of the sweep in {sweep_dir}: trial {number} ({trial_folder(sweep_dir, number)}), "
              f"{metric} {value:.4f}\n"
              "# on the held-out rows of its split.json. That is a validation figure: it chose this trial. For a "
              "figure to report,\n"
              "# score the chosen model on rows no trial saw: ftune eval RUN --data DATA --split test\n")
    return header + yaml.safe_dump(options, sort_keys=False, allow_unicode=True)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def results_table(rows: list[dict[str, Any]], space: list[Param], metric: str, best: Optional[int]) -> str:
    """The trials as a table, the best one marked with *."""
    header = ["", "trial", "state", *(p.key for p in space), metric, "train s"]
    body = []
    for row in rows:
        value = row["value"]
        runtime = row["train_runtime"]
        body.append(["*" if row["number"] == best else "", row["number"], row["state"],
                     *(format_value(row["params"].get(p.key, "")) for p in space),
                     f"{value:.4f}" if value is not None else "-", f"{runtime:.1f}" if runtime is not None else "-"])
    return table(header, body, title=f"trials ({metric} on the held-out rows of split.json; * the best)")


def draw(sweep_dir: Path, rows: list[dict[str, Any]], space: list[Param], metric: str, direction: str) -> bool:
    """Write sweep.png; a picture that cannot be drawn costs a warning line, never the sweep."""
    from ftune.rundir import RunDir

    try:
        RunDir(Path(sweep_dir)).write_picture(PICTURE, sweep_figure(rows, space, metric, direction))
    except Exception as exc:  # noqa: BLE001 — as with a run's pictures
        text = " ".join(str(exc).split()) or type(exc).__name__
        console.warn(f"could not draw {PICTURE} ({type(exc).__name__}: {text}); the sweep itself is not affected")
        return False
    return True


def sweep_figure(rows: list[dict[str, Any]], space: list[Param], metric: str, direction: str):
    """The optimisation history, then each parameter against the metric (pruned trials in grey)."""
    import logging
    import os

    from matplotlib.figure import Figure

    from ftune.pictures import DPI

    if not os.environ.get("FTUNE_DEBUG"):
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
    scored = [r for r in rows if r["value"] is not None]
    panels = 1 + len(space)
    figure = Figure(figsize=(4.2 * panels, 3.6), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    _history(axes[0], scored, metric, direction)
    for axis, param in zip(axes[1:], space):
        _against(axis, scored, param, metric)
    return figure


def _history(axis, rows: list[dict[str, Any]], metric: str, direction: str) -> None:
    better = max if direction == "maximize" else min
    complete = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    axis.scatter([r["number"] for r in complete], [r["value"] for r in complete], label="complete", zorder=3)
    axis.scatter([r["number"] for r in pruned], [r["value"] for r in pruned], marker="x", color="grey",
                 label="pruned (figure when stopped)", zorder=3)
    best, xs, ys = None, [], []
    for row in complete:
        best = row["value"] if best is None else better(best, row["value"])
        xs.append(row["number"])
        ys.append(best)
    if xs:
        axis.step(xs, ys, where="post", color="tab:red", label="best so far")
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("trial")
    axis.set_ylabel(metric)
    axis.set_title("optimisation history")
    axis.legend(fontsize=7)


def _against(axis, rows: list[dict[str, Any]], param: Param, metric: str) -> None:
    shown = [r for r in rows if param.key in r["params"]]
    values = [r["params"][param.key] for r in shown]
    if param.choices is not None:
        labels = [format_value(c) for c in param.choices]
        axis.set_xticks(range(len(labels)), labels)
        values = [param.choices.index(v) for v in values]
    elif param.log:
        from matplotlib.ticker import NullFormatter

        axis.set_xscale("log")
        axis.set_xlim(param.low / 1.2, param.high * 1.2)  # the whole searched range
        axis.xaxis.set_minor_formatter(NullFormatter())
    else:
        margin = (param.high - param.low) * 0.05
        axis.set_xlim(param.low - margin, param.high + margin)
    colours = ["grey" if r["state"] == "pruned" else "tab:blue" for r in shown]
    axis.scatter(values, [r["value"] for r in shown], c=colours, zorder=3)
    axis.set_xlabel(param.key)
    axis.set_ylabel(metric)
    axis.set_title(f"{param.key} ({param.spec})")
