"""Run `python -m ftune ARGS` and send this process a signal at a chosen point, for the signal tests.

    python tests/helpers/signal_during_run.py step SIGTERM 3 classify --data ...       # while step 3 trains
    python tests/helpers/signal_during_run.py while-saving SIGTERM 3 classify ...      # and SIGINT just before
                                                                                        # checkpoint-3 is marked
    python tests/helpers/signal_during_run.py before-training SIGUSR1 0 classify ...   # folder claimed, not training
    python tests/helpers/signal_during_run.py kill-before-mark SIGKILL 4 classify ...  # checkpoint-4 unmarked
    python tests/helpers/signal_during_run.py while-scoring SIGTERM 0 classify ...     # trained, being scored

The signal is the real thing (os.kill(getpid(), SIGNAL)), delivered to the real CLI entry point; it is sent from
inside the step (its forward and backward), so the step it lands in does not depend on the machine's speed.
"""

import os
import runpy
import signal
import sys


def send(name: str) -> None:
    os.kill(os.getpid(), getattr(signal, name))


def main() -> None:
    where, name, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.argv = ["ftune", *sys.argv[4:]]
    import ftune.train
    import ftune.trainers

    def signal_in_step(first: str) -> None:
        original = ftune.trainers.FtuneTrainer.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step + 1 == step:
                send(first)
            return original(self, *args, **kwargs)

        ftune.trainers.FtuneTrainer.training_step = training_step

    def before_marking(action) -> None:
        original = ftune.trainers.CheckpointMarker.on_save

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                action()
            return original(self, args, state, control, **kwargs)

        ftune.trainers.CheckpointMarker.on_save = on_save

    if where == "step":
        signal_in_step(name)
    elif where == "while-saving":  # the signal at the step, then a second one before its checkpoint is complete
        signal_in_step(name)
        before_marking(lambda: send("SIGINT" if name != "SIGINT" else "SIGTERM"))
    elif where == "kill-before-mark":  # every file of the checkpoint written, the mark not yet
        before_marking(lambda: send(name))
    elif where == "before-training":  # the run folder is claimed and locked; the Trainer is being built
        original_build = ftune.train.build_trainer

        def build_trainer(*args, **kwargs):
            send(name)
            return original_build(*args, **kwargs)

        ftune.train.build_trainer = build_trainer
    elif where == "while-scoring":  # training is over; the trained model is being scored
        original_score = ftune.train.score_held_out

        def score_held_out(*args, **kwargs):
            send(name)
            return original_score(*args, **kwargs)

        ftune.train.score_held_out = score_held_out
    else:
        raise SystemExit(f"unknown signal point {where}")
    runpy.run_module("ftune", run_name="__main__")


if __name__ == "__main__":
    main()
