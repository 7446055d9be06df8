"""The task registry: one line per task, naming the module that holds it (its `TASK` object).

Task modules import no torch or transformers at import time, so the CLI can read every task's options, help
and predict inputs cheaply; the heavy libraries load when a task runs.
"""

from __future__ import annotations

import importlib

from ftune.errors import UsageError

TASK_MODULES = {
    "classify": "ftune.tasks.classify",
    "lm": "ftune.tasks.lm",
    "qa": "ftune.tasks.qa",
    "summarize": "ftune.tasks.summarize",
    "ner": "ftune.tasks.ner",
    "translate": "ftune.tasks.translate",
    "dpo": "ftune.tasks.dpo",
}


def get_task(name: str):
    """The task object named `name`, or UsageError listing the known tasks."""
    if name not in TASK_MODULES:
        raise UsageError(f"unknown task '{name}'; ftune knows {', '.join(sorted(TASK_MODULES))}")
    return importlib.import_module(TASK_MODULES[name]).TASK


def all_tasks() -> list:
    return [get_task(name) for name in TASK_MODULES]
