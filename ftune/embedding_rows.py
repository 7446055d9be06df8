"""Word-embedding updates over the rows the training data uses, while a model trains on a CPU.

A batch of 16 sentences reads a few hundred of a vocabulary's 30,000 embedding rows, yet by default the
embedding's gradient is a dense 30522x384 matrix (MiniLM-L6: 47 MB, half the model) that backward zero-fills,
gradient clipping reads and multiplies, and AdamW reads and writes with its two moment buffers at every step.

With weight decay 0 (ftune's default) AdamW leaves a row alone for as long as its gradient has been zero at every
step: its moments stay zero and its update is zero divided by epsilon. Once a row has had a gradient, its moments
decay and it keeps moving at every later step, gradient or not. So ftune trains the input embedding with sparse
gradients (`nn.Embedding(sparse=True)`: the batch's rows only) and `RowwiseAdamW` updates every row any batch has
used so far, with PyTorch's own fused AdamW kernel on those rows: the weights are what dense AdamW gives, to the
rounding of summing a token's repeated gradients in another order. The optimizer's state is AdamW's (full-size
moments), so checkpoints resume either way. Measured on MiniLM-L6, fp32, batch 16 of ~31 tokens, two CPU cores:
a training step 285 -> 268 ms (6%), and no 47 MB dense gradient at the peak.

Only where that holds and was measured: one process on a CPU, fused AdamW without weight decay on the embedding,
an embedding whose weight nothing else uses (not tied to an output layer), not compiled.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

_SPARSE_FOR_TRAINING = "_ftune_sparse_for_training"


class RowwiseAdamW(torch.optim.AdamW):
    """AdamW that updates a parameter with a sparse gradient (an embedding's) over the rows that have had a
    gradient at some step, and every other parameter as AdamW does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._used_rows: dict[torch.Tensor, torch.Tensor] = {}

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._used_rows = {}  # read again from the loaded moments

    @torch.no_grad()
    def step(self, closure=None):
        sparse = [(group, p) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        held = [p.grad for _, p in sparse]
        for _, p in sparse:
            p.grad = None  # AdamW steps the parameters that have a gradient
        try:
            loss = super().step(closure)
        finally:
            for (_, p), grad in zip(sparse, held):
                p.grad = grad
        for group, p in sparse:
            self._step_rows(group, p)
        return loss

    def _step_rows(self, group: dict, p: torch.Tensor) -> None:
        from torch.optim.adam import adam

        if group["weight_decay"] or group["amsgrad"] or not group["fused"]:
            raise ValueError("RowwiseAdamW steps sparse gradients with fused AdamW, without weight decay or "
                             "amsgrad, only")
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        state = self.state[p]
        if not state:  # as AdamW starts its state
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        used = self._used_rows.get(p)
        if used is None:  # a row has had a gradient iff either moment is not zero
            used = (state["exp_avg"] != 0).any(dim=1) | (state["exp_avg_sq"] != 0).any(dim=1)
            self._used_rows[p] = used
        used[rows] = True
        index = used.nonzero().squeeze(1)
        row_grads = torch.zeros((index.numel(), p.shape[1]), dtype=values.dtype, device=p.device)
        row_grads.index_copy_(0, torch.searchsorted(index, rows), values)
        weights = p.index_select(0, index)
        exp_avg = state["exp_avg"].index_select(0, index)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, index)
        beta1, beta2 = group["betas"]
        adam([weights], [row_grads], [exp_avg], [exp_avg_sq], [], [state["step"]], foreach=False, fused=True,
             capturable=False, differentiable=False, decoupled_weight_decay=True, amsgrad=False, beta1=beta1,
             beta2=beta2, lr=group["lr"], weight_decay=0.0, eps=group["eps"], maximize=group["maximize"])
        p.index_copy_(0, index, weights)
        state["exp_avg"].index_copy_(0, index, exp_avg)
        state["exp_avg_sq"].index_copy_(0, index, exp_avg_sq)


def rowwise_adamw(model, optimizer, args) -> Optional[RowwiseAdamW]:
    """`optimizer` (the Trainer's) as a RowwiseAdamW, with the model's input embedding switched to sparse
    gradients; None, changing nothing, where the conditions in the module's docstring do not all hold."""
    if (args.device.type != "cpu" or args.world_size > 1 or args.torch_compile
            or type(optimizer) is not torch.optim.AdamW or optimizer.defaults.get("amsgrad")
            or not optimizer.defaults.get("fused")):
        return None
    embedding = model.get_input_embeddings()
    if not (isinstance(embedding, torch.nn.Embedding) and embedding.weight.requires_grad
            and embedding.weight.dtype == torch.float32 and embedding.max_norm is None):
        return None
    weight = embedding.weight
    if sum(parameter is weight for _, parameter in model.named_parameters(remove_duplicate=False)) != 1:
        return None  # tied to another layer: that layer's gradient is dense
    group = next((g for g in optimizer.param_groups if any(p is weight for p in g["params"])), None)
    if group is None or group["weight_decay"]:
        return None
    embedding.sparse = True
    embedding.__dict__[_SPARSE_FOR_TRAINING] = True
    options = {k: v for k, v in optimizer.defaults.items() if k != "decoupled_weight_decay"}  # AdamW's own
    return RowwiseAdamW(optimizer.param_groups, **options)


def restore_dense_gradients(model) -> None:
    """Undo the sparse gradients `rowwise_adamw` switched on."""
    embedding = model.get_input_embeddings()
    if embedding is not None and embedding.__dict__.pop(_SPARSE_FOR_TRAINING, False):
        embedding.sparse = False


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` for gradients some of which are sparse (coalesced here, in place): the
    2-norm of all of them together, and each multiplied by min(1, max_norm / (norm + 1e-6))."""
    grads = []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad.values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if max_norm != float("inf"):
        coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coefficient.to(grads[0].device))
    return total
