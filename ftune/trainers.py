"""The Trainer classes ftune runs: transformers' own, with held-out rows scored in their original order.

transformers 5 applies `train_sampling_strategy="group_by_length"` to evaluation batches too. ftune groups
training batches by length (faster), but pairs each prediction with its row (ids, QA windows, references)
by position, so evaluation must keep the rows in order.
"""

from __future__ import annotations

from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer, Trainer


class SequentialEvalMixin:
    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or self.args.world_size > 1:
            return None  # as the base Trainer: with several ranks accelerate shards the rows in order
        return SequentialSampler(eval_dataset)


class FtuneTrainer(SequentialEvalMixin, Trainer):
    """Trainer with in-order evaluation."""


class FtuneSeq2SeqTrainer(SequentialEvalMixin, Seq2SeqTrainer):
    """Seq2SeqTrainer with in-order evaluation."""
