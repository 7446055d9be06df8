"""The workers of a sweep: `--jobs` threads, each asking the study for a trial, running it in a process of its own
(ftune.sweep.trials) and telling the outcome, until the total is reached, the time is up, or something stops the
sweep. After every trial, trials.jsonl and best.yaml are rewritten from the study and, with --keep best, the weights of
the trials that are not the best are dropped — only after the new best has been told, so at every moment the best
trial has its weights.

A stop signal (SIGINT, SIGTERM, SIGUSR1: ftune.signals) that comes while the workers run is passed on to the running
trials, which save a checkpoint and stop; each is put back (Optuna's WAITING state, its parameters kept) for `--resume`
to continue it from that checkpoint, and the sweep exits with the signal's code.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ftune import console
from ftune.errors import SIGNAL_EXIT_CODES, RunFailed, RunInterrupted, UsageError
from ftune.folders import is_run_folder, last_complete_checkpoint
from ftune.sweep import study as studies
from ftune.sweep.report import (
    BEST_FILE,
    PICTURE,
    TRIALS_FILE,
    best_recipe,
    draw,
    results_table,
    trial_rows,
    write_text,
    write_trials,
)
from ftune.sweep.space import Param, describe
from ftune.sweep.trials import (
    TrialProcesses,
    drop_weights,
    log_file,
    run_trial_process,
    trial_environment,
    trial_folder,
)

# A trial stopped by a signal: after saving a checkpoint (ftune's exit codes), or before it handled signals at all.
INTERRUPTED_CODES = (*SIGNAL_EXIT_CODES.values(), -signal.SIGINT, -signal.SIGTERM, -signal.SIGUSR1)
_SIGNALS_BY_EXIT_CODE = {code: getattr(signal, name) for name, code in SIGNAL_EXIT_CODES.items()}


class Workers:
    """The threads that run a sweep's trials (`sweep` is a ftune.sweep.runner.Sweep)."""

    def __init__(self, sweep, storage, gpus: list[str]):
        self.sweep, self.storage, self.gpus = sweep, storage, gpus
        self.stop = threading.Event()
        self.ask_lock = threading.Lock()      # one ask at a time in this process: no surplus trials here
        self.write_lock = threading.Lock()    # one writer of trials.jsonl, best.yaml and the weights
        self.processes = TrialProcesses()
        self.failures = 0
        self.problem: Optional[BaseException] = None
        self.interrupted: Optional[int] = None   # the signal that stopped a trial (the sweep then stops)
        self.started = time.monotonic()

    def load_study(self):
        """A Study of this thread's own (its sampler is replaced per trial), on the shared storage."""
        import optuna

        return optuna.load_study(study_name=self.sweep.study_name, storage=self.storage,
                                 sampler=studies.make_sampler(self.sweep.options.sampler, self.sweep.base.seed),
                                 pruner=studies.make_pruner(self.sweep.options.pruner))

    def run(self) -> None:
        from ftune.signals import forwarding

        threads = [threading.Thread(target=self._work, args=(slot,), name=f"sweep-{slot}", daemon=True)
                   for slot in range(self.sweep.options.jobs)]
        for thread in threads:
            thread.start()
        # A stop signal is passed on to the trials, which stop as a training command does: a checkpoint, then their
        # exit code (a repeat of a signal one got from the terminal too is ignored). Waiting for the workers is waiting
        # for those checkpoints. The signal raises nothing here: an exception inside Thread.join can leave the thread
        # marked as ended while it runs (CPython 3.11/3.12), and the sweep would not wait for it.
        with forwarding(self._stop_trials) as forwarded:
            for thread in threads:
                thread.join()
        if forwarded() is not None:
            raise RunInterrupted(forwarded())
        if self.problem is not None:
            raise self.problem
        if self.interrupted is not None:  # a trial was stopped by a signal of its own: the sweep stops as it did
            raise RunInterrupted(self.interrupted)

    def _stop_trials(self, signum: int) -> None:
        self.stop.set()
        self.processes.stop(signum)

    def _work(self, slot: int) -> None:
        try:
            study = self.load_study()
            env = trial_environment(slot, self.sweep.options.jobs, self.gpus)
            while not self.stop.is_set():
                with self.ask_lock:
                    asked = self._next_trial(study)
                if asked is None:
                    return
                if self.stop.is_set():  # the sweep stopped while this trial was being asked for: it waits, unrun
                    studies.put_back(self.storage, self.sweep.study_name, asked[0].number)
                    return
                self._run(study, *asked, env)
        except BaseException as exc:  # noqa: BLE001 — a worker's failure stops the sweep and is reported once
            if self.problem is None:
                self.problem = exc
            self.stop.set()

    def _next_trial(self, study):
        """(trial, params) for the next trial to run, or None when there is none to run."""
        from optuna.trial import TrialState

        sweep = self.sweep
        timeout = sweep.options.timeout
        if timeout and time.monotonic() - self.started >= timeout:
            return None
        trials = study.get_trials(deepcopy=False)
        if sweep.grid and not any(t.state == TrialState.WAITING for t in trials):
            return None
        if not sweep.grid and _places(trials) >= sweep.target:
            return None
        trial = study.ask()
        surplus = (studies.GRID_KEY not in trial.user_attrs) if sweep.grid else \
            _places(study.get_trials(deepcopy=False), before=trial.number) >= sweep.target
        if surplus:  # another process took the last place a moment ago
            trial.set_user_attr(studies.SURPLUS_KEY, True)
            study.tell(trial, state=TrialState.FAIL)
            return None
        trial.set_user_attr(studies.WORKER_KEY, studies.this_worker())
        if not sweep.grid:
            study.sampler = studies.make_sampler(sweep.options.sampler, studies.trial_seed(sweep.base.seed,
                                                                                           trial.number))
        return trial, {p.key: suggest(trial, p) for p in sweep.space}

    def _run(self, study, trial, params: dict[str, Any], env: dict[str, str]) -> None:
        from optuna.trial import TrialState

        sweep = self.sweep
        log = log_file(sweep.folder, trial.number)

        def report(evaluation: int, value: float, last: bool) -> bool:
            trial.report(value, evaluation)
            return not last and trial.should_prune()  # a trial at its last evaluation has finished: not pruned

        try:
            folder = trial_folder(sweep.folder, trial.number)
            config = sweep.trial_config(params, output_dir=folder)
            # A trial a signal stopped continues from its checkpoint (its folder is there); a new one starts.
            resume = is_run_folder(folder)
            console.info(f"trial {trial.number}: {describe(params)}{' (continued)' if resume else ''}")
            spec = {"task": sweep.task.name, "config": config.to_dict(), "held_out": sweep.held_out,
                    "metric": sweep.metric, "resume": resume}
            outcome = run_trial_process(spec, log=log, env=env, report=report, processes=self.processes)
        except Exception as exc:  # the trial never ran to its end: it fails, with the reason, and the sweep stops
            with self.write_lock:
                trial.set_user_attr(studies.FAILURE_KEY, " ".join(str(exc).split()) or type(exc).__name__)
                study.tell(trial, state=TrialState.FAIL)
            if isinstance(exc, UsageError):
                raise UsageError(f"trial {trial.number} ({describe(params)}): {exc}") from None
            raise
        with self.write_lock:
            self._tell(study, trial, params, outcome, log)
            self._refresh(study)

    def _tell(self, study, trial, params: dict[str, Any], outcome, log: Path) -> None:
        from optuna.trial import TrialState

        number, metric = trial.number, self.sweep.metric
        if outcome.finished and outcome.pruned_at is not None:
            trial.set_user_attr(studies.PRUNED_AT_KEY, outcome.pruned_at)
            told = study.tell(trial, state=TrialState.PRUNED)
            console.info(f"trial {number} pruned at evaluation {outcome.pruned_at}: {metric} {told.value:.4f}")
            return
        if outcome.finished and outcome.value is not None:
            study.tell(trial, outcome.value)
            console.info(f"trial {number} complete: {metric} {outcome.value:.4f}")
            return
        error = outcome.error or f"its process ended with exit code {outcome.returncode}"
        interrupted = outcome.returncode in INTERRUPTED_CODES or self.stop.is_set() and outcome.returncode < 0
        if interrupted:
            self._put_back(trial, outcome)
            self.stop.set()
            return
        trial.set_user_attr(studies.FAILURE_KEY, error)
        study.tell(trial, state=TrialState.FAIL)
        if outcome.returncode == UsageError.exit_code:
            self.problem = self.problem or UsageError(f"trial {number} ({describe(params)}): {error}")
            self.stop.set()
            return
        self.failures += 1
        console.warn(f"trial {number} failed: {error} (see {log}); a new trial takes its place")
        if self.failures >= self.sweep.target:
            self.problem = self.problem or RunFailed(f"{self.failures} trials failed, the last one: trial {number}: "
                                                     f"{error}; see {log}")
            self.stop.set()

    def _put_back(self, trial, outcome) -> None:
        """A trial stopped by a signal waits for --resume, which continues it from its last complete checkpoint."""
        folder = trial_folder(self.sweep.folder, trial.number)
        code = outcome.returncode
        stopped_by = self.processes.signal or (-code if code < 0 else _SIGNALS_BY_EXIT_CODE.get(code, signal.SIGINT))
        self.interrupted = self.interrupted or stopped_by
        name = signal.Signals(stopped_by).name
        trial.set_user_attr(studies.INTERRUPTED_KEY, name)
        studies.put_back(self.storage, self.sweep.study_name, trial.number)
        checkpoint = last_complete_checkpoint(folder)
        console.info(f"trial {trial.number} stopped by {name}; --resume continues it from "
                     f"{checkpoint.name if checkpoint else 'its start'}")

    def refresh(self, *, draw_picture: bool = False) -> None:
        """Rewrite trials.jsonl and best.yaml (and sweep.png) from the study."""
        study = self.load_study()
        with self.write_lock:
            rows = self._refresh(study)
        if draw_picture and rows:
            draw(self.sweep.folder, rows, self.sweep.space, self.sweep.metric, self.sweep.direction)

    def _refresh(self, study) -> list[dict[str, Any]]:
        sweep = self.sweep
        best = best_trial(study)
        if best is not None:
            config = sweep.trial_config(best.params, output_dir=None)
            write_text(sweep.folder / BEST_FILE, best_recipe(sweep.task.name, config.to_dict(), sweep.folder,
                                                             best.number, sweep.metric, best.value))
        rows = trial_rows(study.get_trials(deepcopy=False), sweep.folder, sweep.space)
        if sweep.options.keep == "best":
            # Only after the new best has been told: at every moment the best trial has its weights. An interrupted
            # trial keeps its checkpoints: --resume continues from them.
            for row in rows:
                if row["state"] == "interrupted":
                    continue
                if row["weights"] and (best is None or row["number"] != best.number):
                    drop_weights(trial_folder(sweep.folder, row["number"]))
                    row["weights"] = False
        write_trials(sweep.folder, rows)
        return rows

    def summarise(self) -> None:
        sweep = self.sweep
        study = self.load_study()
        rows = trial_rows(study.get_trials(deepcopy=False), sweep.folder, sweep.space)
        best = best_trial(study)
        console.info(results_table(rows, sweep.space, sweep.metric, best.number if best else None))
        written = [TRIALS_FILE, BEST_FILE if best else None, PICTURE if (sweep.folder / PICTURE).is_file() else None]
        console.info(f"wrote {', '.join(str(sweep.folder / name) for name in written if name)}")
        if best is None:
            console.info("no trial completed")
            return
        run = trial_folder(sweep.folder, best.number)
        console.info(f"best: trial {best.number} ({describe(best.params)}), {sweep.metric} {best.value:.4f} — a "
                     "validation figure: it chose the trial")
        console.info(f"score it on rows no trial saw: ftune eval {run} --data DATA --split test; retrain it: ftune "
                     f"{sweep.task.name} --config {sweep.folder / BEST_FILE} --output-dir NEW_DIR")


def suggest(trial, param: Param) -> Any:
    """The trial's value of `param` (the enqueued one in a grid sweep)."""
    if param.choices is not None:
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.integer:
        return trial.suggest_int(param.key, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(param.key, param.low, param.high, log=param.log)


def best_trial(study):
    """The best complete trial, or None."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def _places(trials: list, before: Optional[int] = None) -> int:
    """Trials that take a place in the total: complete, pruned or running (failed ones are replaced)."""
    from optuna.trial import TrialState

    taking = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in trials if t.state in taking and (before is None or t.number < before))
