"""Inside a trial process: train one complete run for the sweep, reporting each evaluation to it (the sweep's side of
the conversation is ftune.sweep.trial_runs).

Imported only in a trial process (`python -m ftune.cli.sweep_trial`), which the sweep starts with a JSON spec on
stdin: the task, the trial's resolved configuration, the held-out split every trial scores, the metric, and the
pipe to report on, and whether to resume (a trial a signal stopped, continued by `ftune sweep --resume`). The run
goes through the training spine like any `ftune TASK` run; the spine checks that its held-out rows are the sweep's.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from transformers import TrainerCallback

from ftune.errors import UsageError
from ftune.sweep.trial_runs import CONTINUE, PRUNE


class ReportEvaluations(TrainerCallback):
    """Sends each evaluation's figure to the sweep (and whether it is the run's last) and stops training when the
    sweep answers that the trial is pruned (the run then finishes with the best checkpoint it has)."""

    def __init__(self, metric: str, reports: TextIO, answers: TextIO):
        self.metric, self.reports, self.answers = metric, reports, answers

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        if self.metric not in metrics:
            raise UsageError(f"the runs report no {self.metric} (they report {', '.join(sorted(metrics))}); pass one "
                             "of those to --metric")
        # Counted in the log history (this evaluation is its last entry), so a trial continued from a checkpoint
        # numbers its evaluations on from those before it.
        evaluation = sum(1 for entry in state.log_history if self.metric in entry)
        last = state.global_step >= state.max_steps  # the run ends here anyway: nothing to stop
        self.reports.write(json.dumps({"evaluation": evaluation, "step": state.global_step, "last": last,
                                       "value": float(metrics[self.metric])}) + "\n")
        self.reports.flush()
        answer = self.answers.readline().strip()
        if answer not in (CONTINUE, PRUNE):
            raise RuntimeError("the sweep that started this trial stopped answering")
        if answer == PRUNE:
            control.should_training_stop = True
        return control


def run_trial(spec: dict[str, Any], answers: TextIO) -> None:
    """Train the trial's run as `spec` describes it."""
    from ftune.config import resolve_config
    from ftune.tasks import get_task
    from ftune.train import run_training

    task = get_task(spec["task"])
    config = resolve_config(task.options_class, layers=[("the trial's configuration", spec["config"])])
    with os.fdopen(spec["report_fd"], "w") as reports:
        reporter = ReportEvaluations(spec["metric"], reports, answers)
        run_training(task, config, resume=spec.get("resume", False), held_out=spec["held_out"], callbacks=[reporter])


def read_spec() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line.strip():
        raise UsageError("this is the process of one sweep trial, started by ftune sweep; run ftune sweep instead")
    return json.loads(line)
