"""A sweep folder as the board shows it: its search (sweep.yaml's `sweep:` section), its trials (trials.jsonl, as
`ftune sweep` rewrites it after every trial) and its best trial, each trial linked to its run.

Only the files the sweep writes for readers are read. The Optuna study itself (study.db, or a shared database) is
not opened: trials.jsonl holds every finished trial's state, parameters and value, and opening an Optuna storage
may write to it (schema checks, migrations), which the board never does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ftune.folders import OUTPUT_MARKER
from ftune.sweep.options import RECIPE_FILE
from ftune.sweep.report import TRIALS_FILE


def read_sweep(path: Path) -> dict[str, Any]:
    """{task, metric, direction, params, trials, best} of the sweep folder `path`; what is missing stays empty."""
    import yaml

    try:
        recipe = yaml.safe_load((path / RECIPE_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        recipe = {}
    recipe = recipe if isinstance(recipe, dict) else {}
    search = recipe.get("sweep") or {}
    info = recipe.get("run") or {}
    trials = [_trial(row, path) for row in _read_jsonl(path / TRIALS_FILE)]
    direction = search.get("direction")
    finished = [t for t in trials if t["state"] == "complete" and isinstance(t["value"], (int, float))]
    best = None
    if finished:
        pick = min if direction == "minimize" else max
        top = pick(finished, key=lambda t: t["value"])
        best = {"number": top["number"], "value": top["value"], "params": top["params"]}
    params = list(search.get("params") or {}) or list(dict.fromkeys(k for t in trials for k in t["params"]))
    return {"task": info.get("task") or _marker_task(path), "metric": search.get("metric"), "direction": direction,
            "params": params, "trials": trials, "best": best}


def sweep_json(path: Path, sweep_id: str, summary: dict[str, Any], run_ids: dict[str, str]) -> dict[str, Any]:
    """`GET /api/sweeps/{id}`: the sweep, its trials with their run ids (`run_ids`: trial folder name -> id)."""
    sweep = read_sweep(path)
    trials = [{**{k: v for k, v in t.items() if k != "run"}, "run_id": run_ids.get(t["run"] or "")}
              for t in sweep["trials"]]
    return {"sweep": summary, "metric": sweep["metric"], "direction": sweep["direction"], "params": sweep["params"],
            "trials": trials, "best": sweep["best"]}


def _trial(row: dict[str, Any], path: Path) -> dict[str, Any]:
    return {"number": row.get("number"), "state": row.get("state"), "value": row.get("value"),
            "params": row.get("params") or {}, "run": row.get("run"), "duration_s": row.get("train_runtime"),
            "error": row.get("error")}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue   # a line being rewritten: the sweep rewrites the file whole, atomically, so this is rare
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _marker_task(path: Path) -> Optional[str]:
    from ftune.runs import read_json_object

    return read_json_object(path / OUTPUT_MARKER).get("task")
