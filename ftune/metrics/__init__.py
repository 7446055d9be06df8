"""Metric modules shipped with ftune. Each `<name>.py` here is an `evaluate` metric module that loads
offline with `evaluate.load(path)`; `load_metric(name)` does that (and imports `evaluate` only then)."""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    return str(METRICS_DIR / f"{name}.py")


def load_metric(name: str):
    """The shipped metric module `name` (e.g. "classification"), loaded through evaluate without the Hub."""
    import evaluate

    return evaluate.load(metric_path(name))
