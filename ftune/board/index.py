"""What `ftune board` shows: the runs, sweeps and evaluations under its folders, found anew on every look (a run's
summary is read again when its files change; its status every time).

Runs are found and summarised by `ftune runs`' own code (ftune.runs: `find_runs`, `read_run`, `run_status`); this
module adds what the board needs beyond the table: an id per run that is safe in a URL, the run's evaluations
(`RUN/evals/NAME/`), the sweep it belongs to, and the runs that cannot be shown, each with why (a damaged
ftune.yaml or results file), so that one broken folder never hides the others.

A run id is the run's path relative to the board folder it was found under (`classify-1`, `sweep/trial-000`),
prefixed by that folder's position when the board has several folders (`0/classify-1`). The board remembers every
id it has shown, so a run deleted while its page is open answers "its folder is gone" rather than "unknown".
Nothing here writes: every file is only read.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from ftune.folders import CONFIG_FILE, FINISHED_FILE, RUN_MARKER
from ftune.rundir import EVAL_PREDICTIONS, EVAL_RESULTS, SPLIT_FILE
from ftune.runs import BEST_SO_FAR
from ftune.sweep.options import RECIPE_FILE as SWEEP_RECIPE

EVALS_FOLDER = "evals"                   # `ftune eval RUN --data ...` writes RUN/evals/NAME/ (ftune.evaluation)
# The files a run's summary and its broken check read (ftune.runs.read_run, broken_why); its status is read anew.
SUMMARY_FILES = (CONFIG_FILE, FINISHED_FILE, EVAL_RESULTS, SPLIT_FILE, EVAL_PREDICTIONS, RUN_MARKER, BEST_SO_FAR)
HOW_TO_START = ("no ftune runs here yet: train one into this folder, e.g. ftune classify --data FILE --output-dir "
                "{folder}/first-run, and it appears without a restart")


class BoardError(Exception):
    """A request the board cannot answer: an HTTP status, a one-line message and a short code."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(" ".join(message.split()))
        self.status, self.code = status, code


@dataclass
class BoardRun:
    """One run folder as the board addresses it."""

    id: str
    path: Path
    root: Path                  # the board folder it was found under

    def folder(self, evaluation: Optional[str]) -> Path:
        """Where the results are: the run itself, or its evaluation `RUN/evals/NAME/`."""
        if evaluation is None:
            return self.path
        if not _plain_name(evaluation) or not (self.path / EVALS_FOLDER / evaluation / EVAL_RESULTS).is_file():
            known = ", ".join(evaluation_names(self.path)) or "none"
            raise BoardError(404, f"run {self.id} has no evaluation {evaluation!r}; its evaluations: {known}",
                             "unknown_evaluation")
        return self.path / EVALS_FOLDER / evaluation

    def open(self):
        """The finished run read back (ftune.rundir.open_run); BoardError when it cannot be."""
        from ftune.errors import UsageError
        from ftune.rundir import open_run

        try:
            return open_run(self.path)
        except UsageError as exc:
            raise BoardError(409, f"run {self.id}: {exc}", "run_unreadable") from None


class BoardIndex:
    """The board's folders and the runs under them (`request.app.state.board`)."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self._seen: dict[str, Path] = {}
        self._summaries: dict[Path, tuple] = {}     # per run or sweep folder: (its files' stamp, what was read)
        self._lock = threading.Lock()

    # ---- ids ----------------------------------------------------------------------------------------
    def run_id(self, path: Path, root_index: int) -> str:
        root = self.folders[root_index]
        relative = path.resolve().relative_to(root.resolve()).as_posix()
        name = root.resolve().name if relative == "." else relative
        return f"{root_index}/{name}" if len(self.folders) > 1 else name

    def _locate(self, run_id: str) -> tuple[Path, Path]:
        """(the folder `run_id` names, the board folder it is under); BoardError for an id no folder can have."""
        parts = PurePosixPath(run_id).parts
        if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or run_id.startswith("/"):
            raise BoardError(404, f"no run {run_id!r}: a run id is a path under the board's folders", "unknown_run")
        if len(self.folders) > 1:
            if not parts[0].isdigit() or int(parts[0]) >= len(self.folders):
                raise BoardError(404, f"no run {run_id!r}: ids start with the folder's number (0 to "
                                 f"{len(self.folders) - 1})", "unknown_run")
            root, parts = self.folders[int(parts[0])], parts[1:]
        else:
            root = self.folders[0]
        if parts == (root.resolve().name,) and _is_run(root):   # the board folder is itself a run
            return root, root
        return root.joinpath(*parts), root

    def run(self, run_id: str) -> BoardRun:
        """The run `run_id` names; BoardError 404 saying its folder is gone when it was shown before."""
        path, root = self._locate(run_id)
        if not _is_run(path):
            with self._lock:
                known = self._seen.get(run_id)
            if known is not None:
                raise BoardError(404, f"run {run_id} is gone: its folder {known} was deleted or moved since the board "
                                 "listed it", "run_gone")
            raise BoardError(404, f"no run {run_id!r} under {', '.join(map(str, self.folders))}", "unknown_run")
        with self._lock:
            self._seen[run_id] = path
        return BoardRun(id=run_id, path=path, root=root)

    # ---- the listing --------------------------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        """What `GET /api/runs` answers: every run, sweep and broken run folder, found now."""
        from ftune.runs import find_runs

        runs, sweeps, broken, found = [], {}, [], set()
        for index, root in enumerate(self.folders):
            for path in (find_runs(root) if root.is_dir() else []):
                found.update((path, path.parent))
                run_id = self.run_id(path, index)
                with self._lock:
                    self._seen[run_id] = path
                sweep = sweep_folder(path, root)
                sweep_id = self.run_id(sweep, index) if sweep is not None else None
                why, shown = self._summary(path, root, run_id, sweep_id)
                if why is not None:
                    broken.append({"id": run_id, "path": str(path), "why": why})
                    continue
                if sweep is not None and sweep_id not in sweeps:
                    sweeps[sweep_id] = self._sweep_summary(sweep, sweep_id)
                runs.append(shown)
        with self._lock:   # forget the folders that are gone
            self._summaries = {path: kept for path, kept in self._summaries.items() if path in found}
        answer: dict[str, Any] = {"folders": [str(f) for f in self.folders], "runs": runs,
                                  "sweeps": list(sweeps.values()), "broken": broken}
        if not runs and not broken:
            answer["how_to_start"] = HOW_TO_START.format(folder=self.folders[0])
        return answer

    def _summary(self, path: Path, root: Path, run_id: str,
                 sweep_id: Optional[str]) -> tuple[Optional[str], Optional[dict[str, Any]]]:
        """(why the run is broken, or None; the run as the API shows it), read again only when one of the files it
        comes from has changed (reading ftune.yaml is most of a listing's time); the status is always found now."""
        from ftune.runs import run_status

        stamp = (run_id, sweep_id, *(file_stamp(path / name) for name in SUMMARY_FILES))
        with self._lock:
            cached = self._summaries.get(path)
        if cached is None or cached[0] != stamp:
            why = broken_why(path)
            cached = (stamp, why, None if why is not None else run_json(path, root, run_id, sweep_id))
            with self._lock:
                self._summaries[path] = cached
        _, why, shown = cached
        if shown is None:
            return why, None
        return None, {**shown, "status": run_status(path), "evals": evaluation_names(path)}

    def _sweep_summary(self, path: Path, sweep_id: str) -> dict[str, Any]:
        """The sweep's summary, read again only when sweep.yaml or trials.jsonl has changed."""
        from ftune.sweep.report import TRIALS_FILE

        stamp = (sweep_id, file_stamp(path / SWEEP_RECIPE), file_stamp(path / TRIALS_FILE))
        with self._lock:
            cached = self._summaries.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, sweep_summary(path, sweep_id))
            with self._lock:
                self._summaries[path] = cached
        return cached[1]

    def sweep(self, sweep_id: str) -> tuple[Path, str]:
        """The sweep folder `sweep_id` names; BoardError 404 when there is none."""
        path, _ = self._locate(sweep_id)
        if not (path / SWEEP_RECIPE).is_file():
            raise BoardError(404, f"no sweep {sweep_id!r}: a sweep is a folder ftune sweep wrote (with {SWEEP_RECIPE})",
                             "unknown_sweep")
        return path, sweep_id


def run_json(path: Path, root: Path, run_id: str, sweep_id: Optional[str]) -> dict[str, Any]:
    """A run as the API shows it (the contract's `Run`), from `ftune runs`' summary of it."""
    from ftune.runs import lower_is_better, read_run

    summary = read_run(path, root)
    main = None
    if summary.main_metric:
        main = {"name": summary.main_metric, "value": summary.value,
                "greater_is_better": not lower_is_better(summary.main_metric)}
    return {"id": run_id, "path": str(path), "name": summary.name, "task": summary.task, "model": summary.model,
            "method": summary.method.lower() if summary.method else None, "data": summary.data,
            "held_out_rows": summary.held_out_rows, "status": summary.status, "main_metric": main,
            "metrics": summary.metrics, "train_time_s": summary.train_seconds, "created": summary.created,
            "evals": evaluation_names(path), "sweep": sweep_id}


def broken_why(path: Path) -> Optional[str]:
    """Why the run at `path` cannot be shown (one line), or None. A run still training is not broken: only the files
    it has are checked."""
    import yaml

    try:
        saved = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return f"{CONFIG_FILE} cannot be read ({' '.join(str(exc).split())[:200]})"
    task = (saved.get("run") or {}).get("task") if isinstance(saved, dict) else None
    if not task:
        return f"{CONFIG_FILE} names no task (no run: task): it is not as ftune writes it"
    from ftune.errors import UsageError
    from ftune.tasks import get_task

    try:
        get_task(task)
    except UsageError as exc:
        return str(exc)
    for name in (FINISHED_FILE, EVAL_RESULTS, SPLIT_FILE):
        file = path / name
        if file.is_file():
            try:
                if not isinstance(json.loads(file.read_text(encoding="utf-8")), dict):
                    return f"{name} does not hold a JSON object"
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                return f"{name} is not valid JSON ({' '.join(str(exc).split())})"
    if (path / FINISHED_FILE).is_file() and not (path / EVAL_PREDICTIONS).is_file():
        return f"the run finished but {EVAL_PREDICTIONS} is missing"
    return None


def evaluation_names(path: Path) -> list[str]:
    """The evaluations of a run on other data: the folders under RUN/evals/ that hold results."""
    folder = path / EVALS_FOLDER
    if not folder.is_dir():
        return []
    return sorted(child.name for child in folder.iterdir()
                  if _plain_name(child.name) and (child / EVAL_RESULTS).is_file())


def sweep_folder(run: Path, root: Path) -> Optional[Path]:
    """The sweep folder a trial run is in (sweeps keep their trials one level down), or None."""
    parent = run.parent
    if parent != run and (parent / SWEEP_RECIPE).is_file() and parent.resolve().is_relative_to(root.resolve()):
        return parent
    return None


def sweep_summary(path: Path, sweep_id: str) -> dict[str, Any]:
    """A sweep as the runs listing shows it (the contract's `Sweep`)."""
    from ftune.board.sweeps import read_sweep

    sweep = read_sweep(path)
    return {"id": sweep_id, "path": str(path), "name": path.name, "task": sweep["task"], "metric": sweep["metric"],
            "direction": sweep["direction"], "trials": len(sweep["trials"]), "best": sweep["best"]}


def file_stamp(path: Path) -> Optional[tuple[int, int]]:
    """A file's modification time and size, or None when it is gone: what cached readings are keyed by."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _is_run(path: Path) -> bool:
    from ftune.runs import is_run

    return path.is_dir() and is_run(path)


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")
