"""The Trainer of the seq2seq tasks: evaluation and prediction generate token ids instead of keeping logits.

Logits would be examples x length x vocabulary floats for the whole held-out split; generated ids are what the
metrics read anyway. The generation settings (new tokens, beams, forced language codes) are a constructor
argument, bound when the trainer is built. Imported only when a run starts (it imports transformers).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ftune.trainers import FtuneTrainer

# Inputs the collator builds for the loss (teacher forcing) that generation must not see.
TEACHER_FORCING_KEYS = ("labels", "decoder_input_ids", "decoder_attention_mask")


class GenerationTrainer(FtuneTrainer):
    generates = True  # its scoring phase is "generating" (ftune.progress)

    def __init__(self, *args, generation_kwargs: Optional[dict[str, Any]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_kwargs = dict(generation_kwargs or {})

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """(loss when the batch has labels, generated ids, labels)."""
        from accelerate.utils import send_to_device

        inputs = send_to_device(inputs, self.args.device)
        loss = None
        if inputs.get("labels") is not None:
            loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
        if prediction_loss_only:
            return loss, None, None
        source = {k: v for k, v in inputs.items() if k not in TEACHER_FORCING_KEYS}
        with torch.no_grad():  # generate() syncs the ranks itself under DeepSpeed ZeRO-3 or FSDP
            generated = self.model.generate(**source, **self.generation_kwargs)
        return loss, generated, inputs.get("labels")
