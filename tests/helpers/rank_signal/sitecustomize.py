"""Signals at a fixed step inside the ranks of a `--num-processes` run, for the signal tests.

Put this folder on PYTHONPATH and set FTUNE_TEST_RANK_SIGNAL=WHO:SIGNAL:STEP:RANK; Python imports this module at the
start of every process, and in the rank numbered RANK (torchrun sets RANK; other processes are left alone) it makes
the training step that ends at STEP send SIGNAL:

- WHO=self: to the rank itself, and to no other rank: the ranks must agree to stop at that step;
- WHO=launcher: to the `ftune` process that started torchrun (the rank's grandparent), which passes it on to the
  ranks; the step then waits until the signal has come back to this rank, so the step it lands in does not depend on
  the machine's speed.
"""

import os

_spec = os.environ.get("FTUNE_TEST_RANK_SIGNAL")
if _spec and os.environ.get("RANK") == _spec.split(":")[3]:
    import signal
    import time

    _who, _name, _step = _spec.split(":")[:3]
    _signum = getattr(signal, _name)

    import ftune.trainers

    _original = ftune.trainers.FtuneTrainer.training_step

    def _training_step(self, *args, **kwargs):
        if self.state.global_step + 1 == int(_step):
            from ftune import signals

            if _who == "self":
                os.kill(os.getpid(), _signum)
            elif signals.requested() is None:
                import psutil

                os.kill(psutil.Process().parent().parent().pid, _signum)
                deadline = time.monotonic() + 120
                while signals.requested() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
        return _original(self, *args, **kwargs)

    ftune.trainers.FtuneTrainer.training_step = _training_step
