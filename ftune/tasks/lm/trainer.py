"""Scoring causal LMs without keeping logits: a Trainer whose prediction step returns, per example, the
sum of its token losses and its scored token count.

The stock prediction step hands back the full logits (examples x tokens x vocabulary), which the Trainer
keeps for the whole eval set; here each batch's logits are reduced at once, so memory stays one batch's.
It derives from FtuneTrainer, so the held-out rows keep their order and each sum stays with its row.
Imported only when a run starts (it imports transformers).
"""

from __future__ import annotations

import torch

from ftune.trainers import FtuneTrainer

IGNORE = -100


class TokenLossTrainer(FtuneTrainer):
    """Predictions are (sum of token losses, token count) rows; the loss is left to the task's metrics so
    that eval_loss is the mean over all held-out tokens, not a mean of per-batch means."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        labels = inputs.pop("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**inputs).logits
        sums = token_loss_sums(logits, labels)
        if prediction_loss_only:
            return sums[:, 0].sum() / sums[:, 1].sum().clamp(min=1), None, None
        # The counts go back as "labels" too: the Trainer calls compute_metrics only when labels exist.
        return None, sums, sums[:, 1]


def token_loss_sums(logits, labels) -> torch.Tensor:
    """(batch, 2) float64: each example's summed next-token cross-entropy and number of scored tokens."""
    targets = labels[:, 1:]
    rows = []
    for i in range(logits.shape[0]):  # one example at a time: the float32 copy stays tokens x vocabulary
        loss = torch.nn.functional.cross_entropy(logits[i, :-1].float(), targets[i], ignore_index=IGNORE,
                                                 reduction="sum")
        rows.append(torch.stack([loss.double(), (targets[i] != IGNORE).sum().double()]))
    return torch.stack(rows)
