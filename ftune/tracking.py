"""`--report-to`: the experiment trackers that get a run's logs, through the Trainer's own integrations.

Each tracker is a `report_to` name of transformers' Trainer. ftune checks the names when the configuration is
resolved, checks that each tracker's package is installed before anything on disk changes (the error names the
extra to install), and points each tracker's local files into the run folder, `RUN/logs/<tracker>/`, through the
environment variables the trackers read, set only while the run trains (so two runs in one process never share
them). A run trains in a staging folder under --overwrite; its logs are swapped in with it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ftune.distributed import is_main_process

NONE = "none"


@dataclass(frozen=True)
class Tracker:
    """An experiment tracker: the packages that provide it, and where its files go given its logs folder."""

    packages: tuple[str, ...]                       # any one of them will do
    extra: str                                      # pip install "ftune[EXTRA]"
    environment: Callable[[Path], dict[str, str]]   # variables that put its local files into the folder
    keep_if_set: tuple[str, ...] = ()               # variables a user's own value wins for (a tracking server)


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker(("tensorboard", "tensorboardX"), "tensorboard",
                           lambda folder: {"TENSORBOARD_LOGGING_DIR": str(folder)}),
    "trackio": Tracker(("trackio",), "trackio", lambda folder: {"TRACKIO_DIR": str(folder)}),
    # MLflow 3.14+ refuses the file store: a SQLite database in the run; a server in MLFLOW_TRACKING_URI wins.
    "mlflow": Tracker(("mlflow",), "mlflow",
                      lambda folder: {"MLFLOW_TRACKING_URI": f"sqlite:///{folder.resolve() / 'mlflow.db'}"},
                      keep_if_set=("MLFLOW_TRACKING_URI",)),
    "wandb": Tracker(("wandb",), "wandb", lambda folder: {"WANDB_DIR": str(folder), "WANDB_PROJECT": "ftune"},
                     keep_if_set=("WANDB_PROJECT",)),
}


def trackers(report_to: Optional[list[str]]) -> list[str]:
    """The trackers named by `--report-to` ([] for none)."""
    return [name for name in report_to or [] if name != NONE]


def problems(report_to: Optional[list[str]]) -> list[str]:
    """What is wrong with the names given to --report-to, each a short phrase."""
    names = list(report_to or [])
    unknown = [name for name in names if name != NONE and name not in TRACKERS]
    found = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(TRACKERS), n=1)
        found.append(f"--report-to: unknown tracker {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                     f"choose from {NONE}, {', '.join(TRACKERS)} (comma-separated)")
    if NONE in names and len(names) > 1:
        found.append(f"--report-to: '{NONE}' cannot be combined with a tracker ({', '.join(names)})")
    return found


def require_installed(report_to: Optional[list[str]]) -> None:
    """Raise UsageError naming the extras to install for trackers whose packages are missing."""
    from ftune.errors import UsageError

    missing = [name for name in trackers(report_to)
               if not any(importlib.util.find_spec(package) for package in TRACKERS[name].packages)]
    if missing:
        extras = ",".join(TRACKERS[name].extra for name in missing)
        raise UsageError(f"--report-to {','.join(missing)}: {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not installed; run pip install \"ftune[{extras}]\" "
                         f"or leave {'it' if len(missing) == 1 else 'them'} out of --report-to")


def tracker_arguments(report_to: Optional[list[str]], run_name: str) -> dict[str, Any]:
    """TrainingArguments for the trackers named: `report_to`, and the run's name as they show it."""
    names = trackers(report_to)
    if not names:
        return {"report_to": NONE}
    return {"report_to": names, "run_name": run_name, **({"project": "ftune"} if "trackio" in names else {})}


@contextlib.contextmanager
def logs_in(folder: Path, report_to: Optional[list[str]]) -> Iterator[None]:
    """While the block runs, each tracker named writes its local files under `folder/<tracker>/`; the environment
    is put back as it was afterwards."""
    changes: dict[str, str] = {}
    for name in trackers(report_to):
        tracker = TRACKERS[name]
        where = Path(folder) / name
        if is_main_process():  # the trackers write from the main process only
            where.mkdir(parents=True, exist_ok=True)
        for key, value in tracker.environment(where).items():
            if key not in tracker.keep_if_set or not os.environ.get(key):
                changes[key] = value
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
