"""The Optuna study behind a sweep: its storage, what it records about the sweep, who runs its trials, its sampler.

The study lives in Optuna's own RDB storage (SQLite `SWEEP/study.db` by default, or `--storage URL` shared by
several machines). It records, as a study attribute, what makes its trials comparable — task, search space,
metric, direction, sampler, the options that change results and the held-out rows — so a process that continues
or joins it with another command is refused with the differences listed.

A trial whose sweep process died (kill -9, a crash, a machine lost) stays RUNNING until it is marked failed (its place
then taken by a new trial): at once by `--resume` in its folder when no other sweep process works there (each holds
a shared lock on the folder, `working_in`, and each trial records the host and folder of the process that runs it);
otherwise by Optuna's heartbeat (RDBStorage's heartbeat_interval and grace_period), which any process working on the
study checks, on one machine or many.

A trial stopped by a signal (which saved a checkpoint first) is put back to WAITING instead: `--resume` continues it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from ftune.errors import UsageError

META_KEY = "ftune"
WORKER_KEY = "worker"             # trial user attribute: the process that runs it (host, pid, sweep folder)
PRUNED_AT_KEY = "pruned_at_evaluation"
FAILURE_KEY = "failure"           # why a trial failed (the trial's error line); none: it was interrupted
INTERRUPTED_KEY = "interrupted"   # the signal that stopped a trial, which waits (WAITING) for --resume to continue it
SURPLUS_KEY = "surplus"           # a trial asked for when the total was already reached: never run
GRID_KEY = "grid_point"           # an enqueued combination of a grid sweep
SQLITE_TIMEOUT_S = 60             # how long a writer waits for another process's lock on a shared SQLite study
SCHEMA_RACE_ATTEMPTS = 5
HEARTBEAT_S = 10                  # a running trial's process records it alive this often ...
GRACE_S = 120                     # ... and a trial silent this long is marked failed by any process on the study
PRESENCE_FILE = ".ftune-sweep.lock"


def require_optuna():
    """The optuna module, or UsageError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise UsageError('ftune sweep needs Optuna, which is not installed; install it with: pip install '
                         '"ftune[sweep]"') from None
    if os.environ.get("FTUNE_DEBUG") != "1":
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # ftune reports each trial, failures included
    return optuna


def default_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"


def open_storage(url: str):
    """Optuna's RDB storage at `url`, with the heartbeat of running trials, or UsageError saying why it cannot be
    opened."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError

    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        for attempt in range(SCHEMA_RACE_ATTEMPTS):
            try:
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                  heartbeat_stale_trial_callback=_report_stale)
            except Exception as exc:
                # Processes that open a new database at the same moment race to create its tables and version row;
                # the loser finds them made (or a duplicate key), and opening again succeeds.
                lost_race = isinstance(exc, IntegrityError) or "already exists" in str(exc)
                if not lost_race or attempt == SCHEMA_RACE_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ModuleNotFoundError as exc:
        raise UsageError(f"--storage {safe_url(url)} needs the Python package '{exc.name}', which is not installed; "
                         f"install it (for PostgreSQL: psycopg for postgresql://, psycopg2-binary for "
                         f"postgresql+psycopg2://)") from None
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


def this_worker(sweep_dir: Path) -> dict[str, Any]:
    """This process, as a trial records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "folder": str(Path(sweep_dir).resolve())}


@contextlib.contextmanager
def working_in(sweep_dir: Path) -> Iterator[bool]:
    """While this sweep process works in `sweep_dir`, hold a shared flock on its `.ftune-sweep.lock` (the system
    releases it when the process dies). Yields True when no other sweep process works there."""
    import fcntl

    fd = os.open(Path(sweep_dir) / PRESENCE_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another process starting up holds it alone
        yield alone
    finally:
        os.close(fd)


def fail_abandoned_trials(study, sweep_dir: Path) -> list:
    """Mark failed the trials left RUNNING by sweep processes of this machine in `sweep_dir` — all dead, when the
    caller works there alone — and return them (a failed trial without a FAILURE_KEY was interrupted)."""
    from optuna.trial import TrialState

    here = this_worker(sweep_dir)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    abandoned = [t for t in running if (t.user_attrs.get(WORKER_KEY) or {}).get("host") == here["host"]
                 and t.user_attrs[WORKER_KEY].get("folder") == here["folder"]]
    for trial in abandoned:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return abandoned


def _report_stale(study, trial) -> None:
    from ftune import console

    worker = trial.user_attrs.get(WORKER_KEY) or {}
    console.info(f"trial {trial.number} (pid {worker.get('pid')} on {worker.get('host')}) has had no heartbeat for "
                 f"{GRACE_S} s: marked failed; a new trial takes its place")


def was_interrupted(trial) -> bool:
    return trial.state.name == "FAIL" and FAILURE_KEY not in trial.user_attrs and SURPLUS_KEY not in trial.user_attrs


def waits_to_continue(trial) -> bool:
    """A trial a signal stopped, waiting for --resume to continue it from its checkpoint."""
    return trial.state.name == "WAITING" and INTERRUPTED_KEY in trial.user_attrs


# --------------------------------------------------------------------------------------------------
# Samplers and pruners


def make_sampler(kind: str, seed: int):
    """The study's sampler: each trial's parameters are drawn by a sampler of its own, seeded from the sweep's seed
    and the trial's number. TPE and random keep no state of their own between trials (they read the study), so the
    same command proposes the same parameters, a resumed sweep never repeats an earlier trial's draws, and trials
    run side by side (--jobs) draw independently of which thread asks first."""
    import optuna

    per_trial = optuna.samplers.TPESampler if kind == "tpe" else optuna.samplers.RandomSampler  # grid: enqueued

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self.samplers: dict[int, Any] = {}

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            if trial.number not in self.samplers:
                self.samplers[trial.number] = per_trial(seed=trial_seed(seed, trial.number))
            return self.samplers[trial.number].sample_independent(study, trial, param_name, param_distribution)

    return TrialSeeded()


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
