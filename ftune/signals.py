"""Signals that stop a command without losing its work: SIGINT (Ctrl-C), SIGTERM (a scheduler, a spot-instance
reclaim, `kill`) and SIGUSR1 (Slurm's `--signal`).

A scheduler that sends SIGTERM allows some seconds before it kills. While a training command runs
(`stop_on_signals`, installed by the command), the first of these signals:

- while the Trainer trains (`deferred`): only asks it to stop. `ftune.trainers.StopOnSignal` finishes the current
  optimizer step (every rank at the same step), writes a complete checkpoint, and the Trainer raises
  `RunInterrupted`;
- after training, while the trained model is scored and the run written: raises `RunInterrupted` at once, and
  `ftune.train` saves a complete checkpoint of the trained state before the command ends (with several ranks, which
  score together, the signal waits until the run is written);
- at any other moment (loading data and the model): raises `RunInterrupted` at once. Nothing has been trained, so
  there is nothing to save; the run folder's lock is released on the way out.

`RunInterrupted` reaches the command's error boundary, which prints the one line naming `--resume` and exits with
130, 143 or 138. Later signals are ignored: a terminal's Ctrl-C reaches every process of its group and launchers
forward what they receive, so one stop often arrives twice, and a second one must not cut the checkpoint being
written short (a process that must die at once still can: SIGKILL, or Ctrl-\\).

`forwarding` is the launcher's side (`--num-processes`, `ftune sweep`): a signal is passed on to the processes that
train, and the launcher waits for them to save.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from ftune.errors import RunInterrupted

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class _State:
    received: Optional[int] = None   # the first stop signal of this command
    deferring: int = 0               # > 0 while a training loop finishes its step before stopping


_state = _State()


def requested() -> Optional[int]:
    """The signal that asked this command to stop, or None."""
    return _state.received


def adopt(signum: int) -> None:
    """Act on `signum` as if this process had received it (another rank did): later signals are repeats."""
    if _state.received is None:
        _state.received = signum


def _stop(signum, frame) -> None:
    if _state.received is not None:
        return  # a repeat: the first signal is being acted on
    _state.received = signum
    if not _state.deferring:
        raise RunInterrupted(signum)


def _install(handler) -> dict:
    """Install `handler` for the stop signals; the previous handlers (empty outside the main thread, where Python
    allows no handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While a command runs: a stop signal ends it with RunInterrupted (see the module's docstring)."""
    saved = (_state.received, _state.deferring)
    _state.received, _state.deferring = None, 0
    previous = _install(_stop)
    try:
        yield
    finally:
        _restore(previous)
        _state.received, _state.deferring = saved


@contextmanager
def deferred() -> Iterator[None]:
    """While the Trainer trains: a stop signal is only recorded (`requested`), for the loop to act on at the end of
    the step."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


@contextmanager
def forwarding(forward: Callable[[int], None]) -> Iterator[Callable[[], Optional[int]]]:
    """While a launcher waits for the processes that train: the first stop signal is passed to `forward(signum)`
    (once) instead of stopping this process. Yields a function that returns the signal forwarded, or None."""
    received: list[int] = []

    def _forward(signum, frame) -> None:
        if received:
            return
        received.append(signum)
        adopt(signum)
        forward(signum)

    previous = _install(_forward)
    try:
        yield lambda: received[0] if received else None
    finally:
        _restore(previous)
