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
    that eval_loss is the mean over all held-out tokens, not a mean of per-batch means.

    With `packing`, training batches are padding-free packed rows (ftune.tasks.lm.packing) when the model keeps
    packed examples apart; evaluation keeps its padded batches, one row per example, for per-row losses."""

    loss_is_scaled_for_ga = None  # causal-LM losses are normalised by the accumulated token count (transformers)

    def __init__(self, *args, packing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.packing = packing
        self._packing_collator = None

    def get_train_dataloader(self):
        if not self._packs():
            return super().get_train_dataloader()
        # The Trainer builds every loader with its data_collator: the packing one serves while the training loader
        # is built (evaluation keeps the padded one).
        padded, self.data_collator = self.data_collator, self._packing_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = padded

    def _packs(self) -> bool:
        """Whether training batches are packed: asked for, and the model keeps packed examples apart (checked once,
        when training starts)."""
        if self.packing and self._packing_collator is None:
            from ftune import console
            from ftune.tasks.lm.packing import keeps_examples_apart, packing_collator

            if keeps_examples_apart(self.model):
                self._packing_collator = packing_collator(self.model, tokenizer=self.processing_class)
                console.info("packing: each training batch is packed into rows of several examples that do not "
                             "attend to each other")
            else:
                self.packing = False
                console.note(f"{type(self.model).__name__} does not keep packed examples apart (restarted position "
                             "ids); training on padded batches")
        return self._packing_collator is not None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        from accelerate.utils import send_to_device

        inputs = send_to_device(inputs, self.args.device)
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
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
