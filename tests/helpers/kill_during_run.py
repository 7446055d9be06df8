"""Run `python -m ftune ARGS` and SIGKILL the process at a chosen point, for the fault tests.

    python tests/helpers/kill_during_run.py after-checkpoint 4 classify --data ...   # once checkpoint-4 is complete
    python tests/helpers/kill_during_run.py during-save 4 classify --data ...        # while checkpoint-4 is written
    python tests/helpers/kill_during_run.py before-swap 0 classify --overwrite ...   # new run done, old not replaced

The kill is the real thing (os.kill(getpid(), SIGKILL)): nothing in the process gets to clean up.
"""

import os
import runpy
import signal
import sys


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    where, step = sys.argv[1], int(sys.argv[2])
    sys.argv = ["ftune", *sys.argv[3:]]
    import ftune.folders
    import ftune.trainers

    if where == "after-checkpoint":
        original = ftune.trainers.CheckpointMarker.on_save

        def on_save(self, args, state, control, **kwargs):
            result = original(self, args, state, control, **kwargs)
            if state.global_step == step:
                kill()
            return result

        ftune.trainers.CheckpointMarker.on_save = on_save
    elif where == "during-save":
        original_save = ftune.trainers.FtuneTrainer._save_optimizer_and_scheduler

        def save(self, output_dir):
            if self.state.global_step == step:
                kill()  # the model files of the checkpoint are written, the rest is not
            return original_save(self, output_dir)

        ftune.trainers.FtuneTrainer._save_optimizer_and_scheduler = save
    elif where == "before-swap":
        ftune.folders.swap_into_place = lambda staging, target: kill()
    else:
        raise SystemExit(f"unknown kill point {where}")
    runpy.run_module("ftune", run_name="__main__")


if __name__ == "__main__":
    main()
