"""The Trainer of `ftune classify`: with class weights, the loss is the class-weighted cross-entropy; with
gradient accumulation, each batch's loss counts 1 / accumulation steps (see `loss_is_scaled_for_ga`).

The weights are a constructor argument, bound where the trainer is built (`ClassifyTask.trainer_kwargs`), so
training, the evaluations during training and `ftune eval` all score the same loss. Without weights the model's
own loss is used, unchanged. It derives from FtuneTrainer, so the held-out rows keep their order. Imported only
when a run starts (it imports torch and transformers).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ftune.trainers import FtuneTrainer


class ClassifyTrainer(FtuneTrainer):
    """Class weights in the cross-entropy (a mean over its batch, divided by the accumulation steps by FtuneTrainer)."""

    def __init__(self, *args, class_weights: Optional[Sequence[float]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None or inputs.get("labels") is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = weighted_cross_entropy(logits, labels, self.class_weights.to(logits.device))
        return (loss, outputs) if return_outputs else loss


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w[y_i] * CE_i / sum_i w[y_i]: each row's cross-entropy weighted by its reference class, in float32."""
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1),
                                             weight=weights)
