"""The Optuna study behind a sweep: its storage, what it records about the sweep, and its trials' owners.

The study lives in Optuna's own RDB storage (SQLite `SWEEP/study.db` by default, or `--storage URL` shared by
several machines). It records, as a study attribute, what makes its trials comparable — task, search space,
metric, direction, sampler, the options that change results and the held-out rows — so a process that continues
or joins it with another command is refused with the differences listed.

Each trial records the process that runs it (host, pid and the pid's start time). A trial left RUNNING by a process
of this machine that is gone (kill -9, a crash) is found by that record: `--resume` marks it failed, and its place
is taken by a new trial. Trials of other machines are theirs to recover. A trial stopped by a signal (which saved a
checkpoint first) is put back to WAITING instead: `--resume` continues it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from ftune.errors import UsageError

META_KEY = "ftune"
WORKER_KEY = "worker"             # trial user attribute: the process that runs it
PRUNED_AT_KEY = "pruned_at_evaluation"
FAILURE_KEY = "failure"           # why a trial failed (the trial's error line); none: it was interrupted
INTERRUPTED_KEY = "interrupted"   # the signal that stopped a trial, which waits (WAITING) for --resume to continue it
SURPLUS_KEY = "surplus"           # a trial asked for when the total was already reached: never run
GRID_KEY = "grid_point"           # an enqueued combination of a grid sweep
SQLITE_TIMEOUT_S = 60             # how long a writer waits for another process's lock on a shared SQLite study
SCHEMA_RACE_ATTEMPTS = 5


def require_optuna():
    """The optuna module, or UsageError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise UsageError('ftune sweep needs Optuna, which is not installed; install it with: pip install '
                         '"ftune[sweep]"') from None
    if os.environ.get("FTUNE_DEBUG") != "1":
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # ftune reports each trial itself
    return optuna


def default_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"


def open_storage(url: str):
    """Optuna's RDB storage at `url`, or UsageError saying why it cannot be opened."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError

    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        for attempt in range(SCHEMA_RACE_ATTEMPTS):
            try:
                return RDBStorage(url, engine_kwargs=engine)
            except Exception as exc:
                # Processes that open a new database at the same moment race to create its tables and version row;
                # the loser finds them made (or a duplicate key), and opening again succeeds.
                lost_race = isinstance(exc, IntegrityError) or "already exists" in str(exc)
                if not lost_race or attempt == SCHEMA_RACE_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ModuleNotFoundError as exc:
        raise UsageError(f"--storage {safe_url(url)} needs the Python package '{exc.name}', which is not installed; "
                         f"install it (e.g. pip install psycopg2-binary for postgresql://)") from None
    except Exception as exc:  # sqlalchemy raises many types for a bad URL, a missing folder, a refused connection
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        raise UsageError(f"cannot open the study storage {safe_url(url)} ({reason}); give a URL Optuna can open, e.g. "
                         "sqlite:///path/study.db or postgresql://user@host/db") from None


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: show it as given
        return url


def find_study(storage, name: str):
    """The study `name` in `storage`, or None."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def create_study(storage, name: str, direction: str, meta: dict[str, Any]):
    """(the study, whether this process created it). Another process may create it at the same moment: then it is
    loaded, and its record is awaited for a while (its creator writes it right after creating it)."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        for _ in range(60):
            if META_KEY in study.user_attrs:
                break
            time.sleep(0.5)
        return study, False
    study.set_user_attr(META_KEY, meta)
    return study, True


def study_differences(study, meta: dict[str, Any], default_of=None) -> list[str]:
    """What differs between the sweep `study` records and this command's `meta`; [] when they match. An option added
    to ftune after the study was made is absent from its record: the sweep had its default (`default_of(key)`)."""
    recorded = study.user_attrs.get(META_KEY)
    if recorded is None:
        return ["the study was not made by ftune sweep"]
    differs = []
    for key in ("task", "metric", "direction", "sampler"):
        if recorded.get(key) != meta[key]:
            differs.append(f"{key} (sweep: {recorded.get(key)}, now: {meta[key]})")
    old, new = recorded.get("params", {}), meta["params"]
    for key in dict.fromkeys([*old, *new]):
        if old.get(key) != new.get(key):
            differs.append(f"--param {key} (sweep: {old.get(key, 'not searched')}, now: "
                           f"{new.get(key, 'not searched')})")
    searched = {key.replace("-", "_") for key in [*recorded.get("params", {}), *meta["params"]]}
    old, new = recorded.get("options", {}), meta["options"]
    if default_of is not None:
        old = {**{key: default_of(key) for key in new.keys() - old.keys()}, **old}
    for key in dict.fromkeys([*old, *new]):
        if key not in searched and old.get(key) != new.get(key):
            differs.append(f"{key} (sweep: {old.get(key)!r}, now: {new.get(key)!r})")
    if recorded.get("held_out") != meta["held_out"] and meta["held_out"] is not None:
        differs.append("data (the held-out rows differ from the sweep's split.json)")
    return differs


# --------------------------------------------------------------------------------------------------
# Who runs a trial


def this_worker() -> dict[str, Any]:
    """This process, as a trial records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> Optional[str]:
    """When process `pid` started (clock ticks since boot, from /proc), so a reused pid is not taken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_is_gone(worker: Optional[dict[str, Any]]) -> bool:
    """True when `worker` ran on this machine and that process no longer exists; False when it lives or runs
    elsewhere (another machine's process cannot be seen from here)."""
    if not worker or worker.get("host") != socket.gethostname():
        return False
    pid = worker.get("pid")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # a live process of another user
    started = _start_time(pid)
    return started is not None and started != worker.get("started")


def orphaned_trials(study) -> list:
    """Trials left RUNNING by processes of this machine that are gone."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if worker_is_gone(t.user_attrs.get(WORKER_KEY))]


def fail_orphans(study, orphans: list) -> None:
    """Mark interrupted trials failed (a failed trial without a FAILURE_KEY was interrupted)."""
    from optuna.trial import TrialState

    for trial in orphans:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def was_interrupted(trial) -> bool:
    return trial.state.name == "FAIL" and FAILURE_KEY not in trial.user_attrs and SURPLUS_KEY not in trial.user_attrs


def put_back(storage, study_name: str, number: int) -> None:
    """Return running trial `number` to WAITING, with its parameters: the next `ask` — this sweep's --resume, or
    another process on the study — gets it again, under the same number, and runs it in the same folder."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study_name)
    storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, number),
                                   state=TrialState.WAITING)


def waits_to_continue(trial) -> bool:
    """A trial a signal stopped, waiting for --resume to continue it from its checkpoint."""
    return trial.state.name == "WAITING" and INTERRUPTED_KEY in trial.user_attrs


# --------------------------------------------------------------------------------------------------
# Samplers and pruners


def make_sampler(kind: str, seed: int):
    """The sampler that proposes one trial's parameters. TPE and random keep no state of their own between trials
    (they read the study), so a sampler made per trial, seeded from the sweep's seed and the trial's number, gives
    the same proposals for the same command, and a resumed sweep never repeats an earlier trial's draws."""
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # random; and grid, whose trials are enqueued combinations


def trial_seed(seed: int, number: int) -> int:
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


# Pruning starts once this many trials have finished: sweeps of fine-tunes are short (each trial is a training run),
# so waiting for Optuna's default of 5 would leave little to stop.
PRUNER_STARTUP_TRIALS = 2


def make_pruner(kind: str):
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
    return optuna.pruners.NopPruner()
