"""The Trainer of `ftune qa`: its evaluations score SQuAD exact match and F1, not only the loss.

SQuAD scores need the windows' offsets and contexts besides the logits, which a plain compute_metrics never
sees. This Trainer keeps the eval windows' info columns aside, evaluates on the model inputs, and binds the
task's WindowScorer to the kept columns — so the best checkpoint is picked by F1, with the same
post-processing as the held-out scores written at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ftune.trainers import FtuneTrainer
from ftune.qa_windows import WINDOW_INFO_COLUMNS, SpanSettings, WindowScorer


@dataclass
class QATrainingArguments(TrainingArguments):
    qa_n_best: int = field(default=20, metadata={"help": "Start/end candidates per window."})
    qa_max_answer_length: int = field(default=30, metadata={"help": "Longest answer span in tokens."})
    qa_null_threshold: float = field(default=0.0, metadata={"help": "SQuAD v2 no-answer margin."})


class QATrainer(FtuneTrainer):
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        windows = eval_dataset if eval_dataset is not None else self.eval_dataset
        scorer = self.compute_metrics
        if not isinstance(scorer, WindowScorer) or windows is None or isinstance(windows, dict) \
                or "offset_mapping" not in windows.column_names:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        settings = SpanSettings(n_best=self.args.qa_n_best, max_answer_length=self.args.qa_max_answer_length,
                                null_threshold=self.args.qa_null_threshold, version_2=scorer.version_2)
        self.compute_metrics = lambda p: scorer.score(windows, p.predictions, settings)
        try:
            return super().evaluate(model_inputs(windows), ignore_keys, metric_key_prefix)
        finally:
            self.compute_metrics = scorer


def model_inputs(windows):
    """The windows without their info columns: what the model (and the collator) takes."""
    return windows.remove_columns([c for c in WINDOW_INFO_COLUMNS if c in windows.column_names])
