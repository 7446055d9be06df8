"""The task recipes. This registry is light: a task's module (and torch) is imported only when it runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ftune.config import ClassifyConfig, LMConfig, QAConfig, SummarizeConfig, TrainConfig


@dataclass(frozen=True)
class TaskEntry:
    name: str
    config_class: type[TrainConfig]
    module: str
    summary: str

    def load(self):
        """The task object (imports the task's module)."""
        return importlib.import_module(self.module).TASK


TASKS: dict[str, TaskEntry] = {
    entry.name: entry
    for entry in [
        TaskEntry("classify", ClassifyConfig, "ftune.tasks.classify",
                  "Fine-tune sequence classification (single texts or text pairs)."),
    ]
}


def get_task_entry(name: str) -> TaskEntry:
    from ftune.errors import UsageError

    if name not in TASKS:
        raise UsageError(f"unknown task '{name}'; ftune knows {', '.join(sorted(TASKS))}")
    return TASKS[name]
