"""The Trainer every ftune task runs — transformers' own, with held-out rows scored in their original order —
and the inference Trainer that `ftune eval` and `ftune predict` score with.

transformers 5 applies `train_sampling_strategy="group_by_length"` to evaluation batches too. ftune groups
training batches by length (faster), but pairs each prediction with its row (ids, QA windows, references)
by position, so evaluation must keep the rows in order. Every task's Trainer class derives from FtuneTrainer.
"""

from __future__ import annotations

from typing import Optional

from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments


class FtuneTrainer(Trainer):
    """Trainer with in-order evaluation."""

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or self.args.world_size > 1:
            return None  # as the base Trainer: with several ranks accelerate shards the rows in order
        return SequentialSampler(eval_dataset)


def inference_trainer(task, config, state, model, tokenizer, *, precision: str, batch_size: Optional[int], scratch: str):
    """The task's Trainer, used only to predict: the batching, precision and collation of training."""
    import torch

    from ftune.precision import precision_arguments

    on_gpu = torch.cuda.is_available()
    if precision in ("bf16", "fp16") and not on_gpu:
        precision = "fp32" if precision == "fp16" else precision
    args = TrainingArguments(
        output_dir=scratch,
        per_device_eval_batch_size=batch_size or config.eval_batch_size or 2 * config.batch_size,
        report_to="none",
        use_cpu=not on_gpu,
        disable_tqdm=True,
        **precision_arguments(precision),
    )
    return task.trainer_class()(model=model, args=args, processing_class=tokenizer,
                                data_collator=task.collator(config, tokenizer, model, None),
                                **task.trainer_kwargs(config, state))
