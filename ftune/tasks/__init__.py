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
        TaskEntry("qa", QAConfig, "ftune.tasks.qa",
                  "Fine-tune extractive question answering (SQuAD v1.1 and v2.0 style)."),
        TaskEntry("summarize", SummarizeConfig, "ftune.tasks.summarize",
                  "Fine-tune a seq2seq model for summarisation."),
        TaskEntry("lm", LMConfig, "ftune.tasks.lm",
                  "Fine-tune a causal language model on plain text, prompt/completion pairs or chats."),
    ]
}


def get_task_entry(name: str) -> TaskEntry:
    from ftune.errors import UsageError

    if name not in TASKS:
        raise UsageError(f"unknown task '{name}'; ftune knows {', '.join(sorted(TASKS))}")
    return TASKS[name]
