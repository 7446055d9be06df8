"""One trial as the sweep sees it from its own process: the trial process it starts and talks to, its outcome and its
weights. What runs inside that process is ftune.sweep.trial_process.

Each trial trains a complete ftune run in `SWEEP/trial-NNN/` in a process of its own (`python -m
ftune.cli.sweep_trial`, through the training spine), its output going to `SWEEP/logs/trial-NNN.log`. Why processes:

- a trial starts clean: no model, optimizer or allocator state of earlier trials, and the figure of a plain
  `ftune TASK` run of its configuration, so `best.yaml` retrains to the same figure;
- `--jobs N` runs N trials side by side (threads of one process would share torch's random state), each on a GPU
  of its own;
- a killed sweep takes its trials with it (each asks the kernel for SIGKILL when its parent dies), so no orphan
  trains on; the trial stays RUNNING in the study until it is marked failed (ftune.sweep.study).

The price is a process start with the libraries imported, a few seconds per trial.

A signal that stops the sweep (SIGINT, SIGTERM, SIGUSR1) is passed on to its trial processes, which save a checkpoint
and stop as any training command does; the sweep records them as interrupted (Optuna's WAITING state, with their
parameters), and `--resume` continues each one in its own folder from that checkpoint.

Pruning: at each evaluation the trial process sends the metric up a pipe and waits for the answer; the sweep
reports it to its Optuna trial and answers "prune" when the pruner says so, and the trial then stops training and
finishes its run folder with the best checkpoint it has. All Optuna calls happen in the sweep's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ftune.folders import is_finished_run, is_run_folder, lock_holder
from ftune.rundir import EVAL_RESULTS, TRAIN_RESULTS

LOGS = "logs"
SWEEP_PID = "FTUNE_SWEEP_PID"  # the environment variable that tells a trial process which sweep to die with
CONTINUE, PRUNE = "continue", "prune"
# Files of a run that hold weights: a full model (one file or shards), an adapter, or a checkpoint.
WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                   "pytorch_model*.bin", "adapter_model.safetensors", "adapter_model.bin")


def trial_folder(sweep_dir: Path, number: int) -> Path:
    return Path(sweep_dir) / f"trial-{number:03d}"


def log_file(sweep_dir: Path, number: int) -> Path:
    return Path(sweep_dir) / LOGS / f"trial-{number:03d}.log"


@dataclass
class Outcome:
    """How a trial process ended."""

    returncode: int
    finished: bool                      # its run folder is a finished run
    pruned_at: Optional[int] = None     # the evaluation at which the sweep stopped it
    value: Optional[float] = None       # the metric in its eval_results.json
    error: Optional[str] = None         # its `error:` line, when it failed


class TrialProcesses:
    """The live trial processes of a sweep, to pass a stop signal on to: once `stop(signum)` has been called, a trial
    process that starts later gets the signal as soon as it is added."""

    def __init__(self):
        self._lock = threading.RLock()  # stop() runs in a signal handler
        self._live: set = set()
        self.signal: Optional[int] = None

    def add(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._live.add(process)
            if self.signal is not None:
                _send_signal(process, self.signal)

    def discard(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._live.discard(process)

    def stop(self, signum: int) -> None:
        """Pass `signum` to every trial process, now and to come (the first call only)."""
        with self._lock:
            if self.signal is not None:
                return
            self.signal = signum
            for process in self._live:
                _send_signal(process, signum)

    def __iter__(self):
        with self._lock:
            return iter(list(self._live))


def _send_signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass  # it has just ended


def run_trial_process(spec: dict[str, Any], *, log: Path, env: dict[str, str], report,
                      processes: TrialProcesses) -> Outcome:
    """Start the trial process with `spec`, answer its evaluations with `report(evaluation, value, last) -> prune?`,
    wait for it and read its outcome. `processes` holds the live trial processes (for an interrupt)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "ftune.cli.sweep_trial"], stdin=subprocess.PIPE,
                                   stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=(write_end,))
    os.close(write_end)  # the trial holds the only write end: the pipe closes when it exits
    processes.add(process)
    pruned_at = None
    try:
        _send(process, json.dumps({**spec, "report_fd": write_end}))
        with os.fdopen(read_end, "r") as evaluations:
            for line in evaluations:
                message = json.loads(line)
                prune = report(message["evaluation"], message["value"], message["last"])
                if prune and pruned_at is None:
                    pruned_at = message["evaluation"]
                _send(process, PRUNE if prune else CONTINUE)
        returncode = process.wait()
    finally:
        processes.discard(process)
    folder = Path(spec["config"]["output_dir"])
    finished = returncode == 0 and is_finished_run(folder)
    value = json.loads((folder / EVAL_RESULTS).read_text()).get(spec["metric"]) if finished else None
    return Outcome(returncode=returncode, finished=finished, pruned_at=pruned_at, value=value,
                   error=None if finished else last_error(log))


def _send(process: subprocess.Popen, line: str) -> None:
    try:
        process.stdin.write((line + "\n").encode())
        process.stdin.flush()
    except (BrokenPipeError, OSError):
        pass  # the trial has ended; its exit code tells how


def last_error(log: Path) -> Optional[str]:
    """The trial's one `error:` line (the last one), without the prefix."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else None


def trial_environment(slot: int, jobs: int, gpus: list[str]) -> dict[str, str]:
    """The environment of a trial process in worker slot `slot`: its own GPU, or its share of the CPU cores."""
    env = {**os.environ, SWEEP_PID: str(os.getpid())}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    elif jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))  # side by side, not on top of each other
    return env


def visible_gpus() -> list[str]:
    """The CUDA devices trials may be pinned to (as CUDA_VISIBLE_DEVICES names them); [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in listed.split(",") if n.strip()] if listed else []
    return names or [str(i) for i in range(torch.cuda.device_count())]


# --------------------------------------------------------------------------------------------------
# Weights


def has_weights(folder: Path) -> bool:
    return any(next(Path(folder).glob(pattern), None) for pattern in WEIGHT_PATTERNS)


def drop_weights(folder: Path) -> bool:
    """Remove the weights ftune wrote into a trial's run folder (and what an interrupted one kept for resuming:
    checkpoints, the best model so far); the configuration, split, metrics, predictions and model card stay. Only a
    run folder of ftune's that no process holds is touched. True when something was removed."""
    from ftune.rundir import RunDir

    folder = Path(folder)
    if not is_run_folder(folder) or lock_holder(folder):
        return False
    weights = [path for pattern in WEIGHT_PATTERNS for path in folder.glob(pattern)]
    for path in weights:
        path.unlink()
    before = {p.name for p in folder.iterdir()}
    RunDir(folder).remove_checkpoints()
    return bool(weights) or before != {p.name for p in folder.iterdir()}


def train_runtime(folder: Path) -> Optional[float]:
    results = Path(folder) / TRAIN_RESULTS
    if not results.is_file():
        return None
    return json.loads(results.read_text()).get("train_runtime")
