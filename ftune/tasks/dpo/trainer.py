"""The DPO Trainer: TRL's DPOTrainer inside ftune's spine, and the per-pair figures ftune scores with.

Training is TRL's own: its loss (`DPOConfig.loss_type`), its fused log-probabilities, its reference handling (a frozen
copy, the adapter disabled under LoRA, or the reference log-probs precomputed once) and its training logs (reward
accuracy, margins). The class derives from FtuneTrainer first, so held-out rows keep their order, a stop signal saves
a checkpoint and a non-finite loss stops the run, as for every task.

Where ftune differs, and why:
- the pairs come tokenised by the task (`ftune.tasks.dpo.data`, TRL's own scheme), so that the checks and the row ids
  hold before anything is written: TRL's dataset preparation is skipped;
- scoring returns one row of figures per pair (TRL's prediction step returns a batch mean): the policy's and the
  reference's log-probabilities of both answers, from the same fused head and reference pass TRL trains with, and the
  pair's own loss (`pair_losses`: TRL's formula for each loss type, one value per pair, so that eval_loss is the mean
  of the lines of eval_predictions.jsonl and a pair scores the same alone as with its split);
- the same class scores a finished run (`ftune eval`, the final figures): it is then built without training pairs,
  which TRL's constructor requires, so it takes transformers' Trainer constructor and loads the reference itself
  (a full run's starting model, or the LoRA adapter disabled);
- it sends no telemetry and writes no model card of TRL's: ftune talks to the Hub only in `ftune push` and writes the
  run's model card itself.
Imported only when a run starts (it imports transformers and TRL).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from transformers import Trainer
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import add_fused_lm_head

from ftune.trainers import FtuneTrainer

# Columns of the figures a prediction step returns, one row per pair.
FIGURES = ("logps_chosen", "logps_rejected", "ref_logps_chosen", "ref_logps_rejected", "tokens_chosen",
           "tokens_rejected", "loss")

# TRL's names of its training-batch figures -> ftune's names of the same figures (eval_... on the held-out pairs).
TRAINING_NAMES = {"rewards/accuracies": "rewards_accuracy", "rewards/margins": "rewards_margin",
                  "rewards/chosen": "rewards_chosen", "rewards/rejected": "rewards_rejected",
                  "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected"}


@dataclass(frozen=True)
class Preference:
    """The DPO settings of a run (from its options), given to the Trainer as it is built."""

    beta: float
    loss: str
    label_smoothing: float = 0.0
    precompute_ref: bool = False
    discopop_tau: float = 0.05   # TRL's default; ftune does not expose it

    def arguments(self, args) -> DPOConfig:
        """TRL's DPOConfig: the spine's TrainingArguments, field for field, with the DPO settings."""
        import dataclasses

        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
        return DPOConfig(**values, beta=self.beta, loss_type=[self.loss], label_smoothing=self.label_smoothing,
                         precompute_ref_log_probs=self.precompute_ref, discopop_tau=self.discopop_tau)


class PreferenceTrainer(FtuneTrainer, DPOTrainer):
    """TRL's DPOTrainer with ftune's in-order scoring; `preference` the DPO settings, `reference` what loads the
    reference model when a finished full run is scored (the run's starting model)."""

    def __init__(self, model, args, *, preference: Preference, reference: Optional[Callable[[], Any]] = None,
                 train_dataset=None, eval_dataset=None, data_collator=None, processing_class=None,
                 compute_metrics=None, callbacks=None):
        from peft import PeftModel

        self.preference = preference
        self._reference_loader = reference
        peft = isinstance(model, PeftModel)
        if train_dataset is None:  # scoring a model, no training
            Trainer.__init__(self, model=model, args=args, data_collator=data_collator, eval_dataset=eval_dataset,
                             processing_class=processing_class, compute_metrics=compute_metrics, callbacks=callbacks)
            self.beta, self.ld_alpha, self.precompute_ref_logps = preference.beta, None, False
            self.ref_model, self._is_vision_dataset = None, False
            self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
            add_fused_lm_head(model.get_base_model() if peft else model)
            return
        if args.n_gpu > 1:
            from ftune.errors import UsageError

            # TRL refuses nn.DataParallel, which transformers uses when one process sees several GPUs.
            raise UsageError(f"ftune dpo trains on one GPU per process and this one sees {args.n_gpu}: pass "
                             f"--num-processes {args.n_gpu}, or make one GPU visible (CUDA_VISIBLE_DEVICES=0)")
        # A frozen copy of the starting model is the reference of a full run, unless its log-probs are precomputed
        # (then TRL scores the pairs with the model before its first step); under LoRA it is the adapter disabled
        # (precomputed or at every step).
        ref_model = None if peft or preference.precompute_ref else _frozen_copy(model)
        DPOTrainer.__init__(self, model=model, ref_model=ref_model, args=preference.arguments(args),
                            data_collator=data_collator, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=processing_class, compute_metrics=compute_metrics, callbacks=callbacks)
        if peft and "ref" in model.peft_config:
            # TRL copies an adapter it is given as the reference ("ref"), for an adapter trained before. ftune's is
            # new (zero-initialised B: the copy equals the adapter disabled), so the reference is the adapter
            # disabled, without a copy, and the run saves one adapter.
            model.delete_adapter("ref")

    # ---- TRL's parts ftune replaces ----------------------------------------------------------------
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # The task tokenised the pairs (TRL's scheme, ftune.tasks.dpo.data) after checking them; a private TRL hook,
        # named in tests/test_dpo.py's compat test.
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # Its DataLoader draws a seed from the global RNG, which would shift the training batches' order: a run with
        # --precompute-ref must train on the batches of the same run without it. (A private TRL method, named in
        # tests/test_dpo.py's compat test; it runs inside TRL's constructor, where no public hook reaches.)
        with torch.random.fork_rng(devices=[]):
            return super()._precompute_ref_logps(dataset, name, batch_size)

    def _send_telemetry(self):
        """Nothing is sent: ftune talks to the Hub only in `ftune push`."""

    def create_model_card(self, *args, **kwargs):
        """ftune writes the run's model card (ftune.modelcard)."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "length" not in self._signature_columns:
            self._signature_columns.append("length")  # the length-grouped sampler reads it; the collator does not

    def log(self, logs, start_time=None):
        # TRL's training figures under the names ftune gives the same figures on the held-out pairs, so a learning
        # curve (ftune.pictures) shows both.
        for figures in self._metrics.values():
            for trl_name, name in TRAINING_NAMES.items():
                if trl_name in figures:
                    figures[name] = figures.pop(trl_name)
        super().log(logs, start_time)

    # ---- scoring: one row of figures per pair -----------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            chosen, rejected = self._policy_logps(model, inputs)
            if "ref_chosen_logps" in inputs:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = self.compute_ref_log_probs(self._reference_model(), inputs)
        tokens_chosen, tokens_rejected = inputs["completion_mask"].sum(dim=1).chunk(2, dim=0)
        figures = torch.stack([chosen, rejected, ref_chosen, ref_rejected, tokens_chosen, tokens_rejected],
                              dim=1).double()
        losses = pair_losses(self.preference, figures)
        figures = torch.cat([figures, losses[:, None]], dim=1)
        if prediction_loss_only:
            return losses.mean(), None, None
        # The losses go back as "labels" too: the Trainer calls compute_metrics only when labels exist.
        return losses.mean(), figures, losses

    def _policy_logps(self, model, inputs):
        """Each answer's summed log-probability under the policy, as TRL's loss computes it (its fused head)."""
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                        fused_lm_head=True, use_cache=False)
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1):].sum(dim=1)
        return logps.chunk(2, dim=0)

    def _reference_model(self):
        """What TRL's `compute_ref_log_probs` scores the reference with: the frozen copy, or the policy itself under
        LoRA (TRL disables the adapter); for a finished full run, its starting model, loaded on first use."""
        from peft import PeftModel

        if self.ref_model is None and not isinstance(self.model, PeftModel):
            if self._reference_loader is None:
                raise RuntimeError("scoring a full DPO model needs its reference model")
            reference = self._reference_loader()
            add_fused_lm_head(reference)
            self.ref_model = reference.to(self.args.device).eval().requires_grad_(False)
        return self.ref_model if self.ref_model is not None else self.model


def _frozen_copy(model):
    return copy.deepcopy(model).eval().requires_grad_(False)


def pair_losses(preference: Preference, figures: torch.Tensor) -> torch.Tensor:
    """Each pair's loss, TRL's formula for `preference.loss` (DPOTrainer._compute_loss, one value per pair where
    TRL takes their batch mean), from the figures' columns (FIGURES), in float64. Only the loss types whose value
    for a pair depends on that pair alone (ftune.tasks.dpo.PAIRWISE_LOSSES)."""
    chosen, rejected, ref_chosen, ref_rejected, tokens_chosen, tokens_rejected = figures[:, :6].unbind(dim=1)
    beta, smoothing = preference.beta, preference.label_smoothing
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    loss = preference.loss
    if loss == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss in ("ipo", "sigmoid_norm"):
        # Both normalise each answer's log-ratio by its token count (TRL: the completion mask's sum, at least 1).
        normalised = chosen_ratio / tokens_chosen.clamp(min=1.0) - rejected_ratio / tokens_rejected.clamp(min=1.0)
        if loss == "ipo":
            return (normalised - 1 / (2 * beta)) ** 2
        return -F.logsigmoid(beta * normalised)
    if loss == "exo_pair":
        epsilon = torch.tensor(smoothing, dtype=delta.dtype)
        return (torch.sigmoid(beta * delta) * (F.logsigmoid(beta * delta) - torch.log1p(-epsilon))
                + torch.sigmoid(-beta * delta) * (F.logsigmoid(-beta * delta) - torch.log(epsilon)))
    if loss == "nca_pair":
        return (-F.logsigmoid(beta * chosen_ratio) - 0.5 * F.logsigmoid(-beta * chosen_ratio)
                - 0.5 * F.logsigmoid(-beta * rejected_ratio))
    if loss == "robust":
        return ((-(1 - smoothing) * F.logsigmoid(beta * delta) + smoothing * F.logsigmoid(-beta * delta))
                / (1 - 2 * smoothing))
    if loss == "bco_pair":
        return -F.logsigmoid(beta * chosen_ratio) - F.logsigmoid(-beta * rejected_ratio)
    if loss == "sppo_hard":
        return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    if loss == "apo_zero":
        return 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
    if loss == "apo_down":
        return torch.sigmoid(beta * chosen_ratio) + 1 - torch.sigmoid(beta * delta)
    if loss == "discopop":
        logits = beta * delta
        modulation = torch.sigmoid(logits / preference.discopop_tau)
        return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    raise ValueError(f"no per-pair loss for loss type {loss!r}")
