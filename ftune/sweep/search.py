"""The search on Optuna's own loop: `study.optimize` (`--jobs` threads, `--timeout`), stopped by `MaxTrialsCallback`
once the study holds `--trials` complete or pruned trials. The objective runs one trial in a process of its own
(ftune.sweep.trial_runs), answers its evaluations with the pruner and tells Optuna how it ended. After every trial,
trials.jsonl and best.yaml are rewritten and, with --keep best, the weights of the trials that are not the best are
dropped — only after the new best has been told, so at every moment the best trial has its weights.

Never more than `--trials` finished trials across every process on the study: a process asks for another trial, and
runs one it asked for, only while the finished and running trials (before it) leave a place. Otherwise it waits,
running Optuna's heartbeat check, until a running trial fails (a failed trial's place is taken by a new proposal) or
the total is reached (a trial asked for is then dropped unrun: failed, marked `surplus`, left out of trials.jsonl).

A stop signal (SIGINT, SIGTERM, SIGUSR1: ftune.signals) is passed on to the running trials; each saves a checkpoint,
stops and is put back (WAITING, its parameters kept) for `--resume` to continue; the sweep exits with the signal's code.
"""

from __future__ import annotations

import queue
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
from ftune.sweep.trial_runs import (
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
PLACE_POLL_S = 1.0   # how often a trial waiting for a place looks at the study again


class TrialEnded(Exception):
    """A trial that ended without a figure (it failed, or it was surplus): Optuna records it failed and goes on."""


class TrialPutBack(BaseException):
    """A trial put back to WAITING (stopped by a signal, or asked for as the sweep stopped). A BaseException other
    than KeyboardInterrupt, so Optuna's loop lets it through without telling the trial failed."""


class Search:
    """The trials of one sweep process (`sweep` is a ftune.sweep.runner.Sweep, `study` its Optuna study)."""

    def __init__(self, sweep, study, gpus: list[str], deadline: Optional[float]):
        self.sweep, self.study, self.gpus, self.deadline = sweep, study, gpus, deadline
        self.slots: queue.SimpleQueue = queue.SimpleQueue()  # which GPU (or share of the cores) a trial gets
        for slot in range(sweep.options.jobs):
            self.slots.put(slot)
        self.stop = threading.Event()
        self.write_lock = threading.Lock()    # one writer of trials.jsonl, best.yaml and the weights
        self.processes = TrialProcesses()
        self.failures = 0
        self.interrupted: Optional[int] = None   # the signal that stopped a trial (the sweep then stops)

    def run(self) -> None:
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        from ftune.signals import forwarding

        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        enough = MaxTrialsCallback(self.sweep.target, states=(TrialState.COMPLETE, TrialState.PRUNED))
        callbacks = [lambda study, trial: self.refresh(), enough, self._ask_again]
        # A stop signal is passed on to the trials, which stop as a training command does: a checkpoint, then their
        # exit code (a repeat of a signal one got from the terminal too is ignored). The signal raises nothing here:
        # Optuna's loop waits for the running trials, that is for those checkpoints.
        with forwarding(self._stop_trials) as forwarded:
            try:
                self.study.optimize(self.objective, n_jobs=self.sweep.options.jobs, timeout=left,
                                    catch=(TrialEnded,), callbacks=callbacks)
            except TrialPutBack:
                pass
            except Exception:
                if forwarded() is None:
                    raise
        if forwarded() is not None:
            raise RunInterrupted(forwarded())
        if self.interrupted is not None:  # a trial was stopped by a signal of its own: the sweep stops as it did
            raise RunInterrupted(self.interrupted)

    def _stop_trials(self, signum: int) -> None:
        self.stop.set()
        self.processes.stop(signum)

    # ----------------------------------------------------------------------------------------------
    # One trial

    def objective(self, trial) -> float:
        trial.set_user_attr(studies.WORKER_KEY, studies.this_worker(self.sweep.folder))
        needed = studies.GRID_KEY in trial.user_attrs if self.sweep.grid else self._wait_for_place(trial.number)
        if self.stop.is_set():  # the sweep stopped while this trial was being asked for: it waits, unrun
            raise self._put_back(trial)
        if not needed:
            trial.set_user_attr(studies.SURPLUS_KEY, True)
            self.study.stop()
            raise TrialEnded("not needed")
        params = {p.key: suggest(trial, p) for p in self.sweep.space}
        return self._outcome(trial, params, *self._run(trial, params))

    def _wait_for_place(self, before: Optional[int] = None) -> bool:
        """Wait until trial number `before` (None: the next one asked for) has a place in the total: True; False when
        the total is reached, the time is up or the sweep stops."""
        import optuna
        from optuna.trial import TrialState

        while not self.stop.is_set():
            trials = self.study.get_trials(deepcopy=False)
            finished = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
            if finished >= self.sweep.target or self.deadline is not None and time.monotonic() >= self.deadline:
                return False
            if _places(trials, before) < self.sweep.target:
                return True
            optuna.storages.fail_stale_trials(self.study)  # frees the places of trials whose processes died
            self.stop.wait(PLACE_POLL_S)
        return False

    def _ask_again(self, study, trial) -> None:
        """Optuna's callback after each trial: stop unless another trial would have a place (a grid: unless a
        combination waits)."""
        from optuna.trial import TrialState

        if self.sweep.grid:
            more = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        else:
            more = self._wait_for_place()
        if not more:
            study.stop()

    def _run(self, trial, params: dict[str, Any]):
        """(the trial process's Outcome, its log, its last reported figure)."""
        sweep = self.sweep
        log = log_file(sweep.folder, trial.number)
        reported: list[float] = []

        def report(evaluation: int, value: float, last: bool) -> bool:
            trial.report(value, evaluation)
            reported.append(value)
            return not last and trial.should_prune()  # a trial at its last evaluation has finished: not pruned

        slot = self.slots.get()
        try:
            folder = trial_folder(sweep.folder, trial.number)
            config = sweep.trial_config(params, output_dir=folder)
            # A trial a signal stopped continues from its checkpoint (its folder is there); a new one starts.
            resume = is_run_folder(folder)
            console.info(f"trial {trial.number}: {describe(params)}{' (continued)' if resume else ''}")
            spec = {"task": sweep.task.name, "config": config.to_dict(), "held_out": sweep.held_out,
                    "metric": sweep.metric, "resume": resume}
            env = trial_environment(slot, sweep.options.jobs, self.gpus)
            outcome = run_trial_process(spec, log=log, env=env, report=report, processes=self.processes)
        except Exception as exc:  # the trial never ran to its end: it fails, with the reason, and the sweep stops
            trial.set_user_attr(studies.FAILURE_KEY, " ".join(str(exc).split()) or type(exc).__name__)
            if isinstance(exc, UsageError):
                raise UsageError(f"trial {trial.number} ({describe(params)}): {exc}") from None
            raise
        finally:
            self.slots.put(slot)
        return outcome, log, reported[-1] if reported else None

    def _outcome(self, trial, params: dict[str, Any], outcome, log: Path, last_reported: Optional[float]) -> float:
        """The trial's figure for Optuna, or the exception that tells it how the trial ended."""
        from optuna import TrialPruned

        number, metric = trial.number, self.sweep.metric
        if outcome.finished and outcome.pruned_at is not None:
            trial.set_user_attr(studies.PRUNED_AT_KEY, outcome.pruned_at)
            console.info(f"trial {number} pruned at evaluation {outcome.pruned_at}: {metric} {last_reported:.4f}")
            raise TrialPruned()  # Optuna records the figure last reported
        if outcome.finished and outcome.value is not None:
            console.info(f"trial {number} complete: {metric} {outcome.value:.4f}")
            return outcome.value
        if outcome.returncode in INTERRUPTED_CODES or self.stop.is_set() and outcome.returncode < 0:
            code = outcome.returncode
            stopped_by = self.processes.signal or (-code if code < 0 else _SIGNALS_BY_EXIT_CODE.get(code,
                                                                                                  signal.SIGINT))
            self.interrupted = self.interrupted or stopped_by
            self.stop.set()
            raise self._put_back(trial, stopped_by)
        error = outcome.error or f"its process ended with exit code {outcome.returncode}"
        trial.set_user_attr(studies.FAILURE_KEY, error)
        if outcome.returncode == UsageError.exit_code:
            raise UsageError(f"trial {number} ({describe(params)}): {error}")
        with self.write_lock:
            self.failures += 1
            failures = self.failures
        if failures >= self.sweep.target:
            raise RunFailed(f"{failures} trials failed, the last one: trial {number}: {error}; see {log}")
        console.warn(f"trial {number} failed: {error} (see {log}); a new trial takes its place")
        raise TrialEnded(error)

    def _put_back(self, trial, stopped_by: Optional[int] = None) -> TrialPutBack:
        """Return the trial to WAITING; the exception to leave Optuna's loop with. One a signal stopped mid-run waits
        for --resume, which continues it from its last complete checkpoint; one never run waits to be asked again."""
        from optuna.trial import TrialState

        if stopped_by is not None:
            name = signal.Signals(stopped_by).name
            trial.set_user_attr(studies.INTERRUPTED_KEY, name)
            checkpoint = last_complete_checkpoint(trial_folder(self.sweep.folder, trial.number))
            console.info(f"trial {trial.number} stopped by {name}; --resume continues it from "
                         f"{checkpoint.name if checkpoint else 'its start'}")
        # The next `ask` — this sweep's --resume, or another process on the study — gets it again, under the same number
        # and with its parameters, and runs it in the same folder.
        storage = trial.storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.sweep.study_name), trial.number)
        storage.set_trial_state_values(trial_id, state=TrialState.WAITING)
        return TrialPutBack()

    # ----------------------------------------------------------------------------------------------
    # What the sweep writes and prints

    def refresh(self, *, draw_picture: bool = False) -> None:
        """Rewrite trials.jsonl and best.yaml (and sweep.png) from the study."""
        with self.write_lock:
            rows = self._refresh()
        if draw_picture and rows:
            draw(self.sweep.folder, rows, self.sweep.space, self.sweep.metric, self.sweep.direction)

    def _refresh(self) -> list[dict[str, Any]]:
        sweep = self.sweep
        best = best_trial(self.study)
        if best is not None:
            config = sweep.trial_config(best.params, output_dir=None)
            write_text(sweep.folder / BEST_FILE, best_recipe(sweep.task.name, config.to_dict(), sweep.folder,
                                                             best.number, sweep.metric, best.value))
        rows = trial_rows(self.study.get_trials(deepcopy=False), sweep.folder, sweep.space)
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
        rows = trial_rows(self.study.get_trials(deepcopy=False), sweep.folder, sweep.space)
        best = best_trial(self.study)
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
    """The trial's value of `param` (the enqueued one in a grid sweep, the one it had when it was put back)."""
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


def _places(trials: list, before: Optional[int]) -> int:
    """Trials (before number `before`) that take a place in the total: complete, pruned or running (failed ones are
    replaced)."""
    from optuna.trial import TrialState

    taking = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in trials if t.state in taking and (before is None or t.number < before))
