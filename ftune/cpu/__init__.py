"""The CPU speed-ups, behind one door.

Each is careful and tested on its own; none of the spine, the Trainers or the tasks knows about them:

- `dropout.py`: dropout masks drawn in parallel from NumPy's generator, during training steps (the same
  distribution as PyTorch's dropout, other masks);
- `attention.py`: eager attention for models that do not generate text (so their attention dropout is ftune's);
- `first_token.py`: the last encoder layer of a BERT-family classifier computed for the first token only (in
  training and when a run's predictions are scored by its forward pass);
- `memory.py` and the garbage collector's settings: for the whole `ftune` process.

Three entry points: `cpu_speedups(trainer, enabled)` around training applies what fits the model and the hardware
and undoes all of it on exit, also when training raises, so the model is scored and saved as `ftune eval` loads it;
`scoring_speedups(model, device)` around a forward pass that only predicts (ftune.engines.ForwardScorer: `ftune
predict`, `ftune serve`) applies the exact one that fits, the first-token last layer; `process_speedups(argv)`
around a whole `ftune` command sets the process-wide ones. `--no-cpu-speedups` (a run's `cpu_speedups`, recorded
in ftune.yaml: its dropout masks differ) turns them all off; the environment variable FTUNE_CPU_SPEEDUPS=0 makes
that the default, and turns off the one in prediction. What each gains is measured in docs/speed.md and bench/.

This package imports no torch at import time: the CLI imports it.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Optional, Sequence

from ftune.config import ENVIRONMENT_DEFAULTS

ENVIRONMENT = ENVIRONMENT_DEFAULTS["cpu_speedups"]  # FTUNE_CPU_SPEEDUPS=0: --no-cpu-speedups is the default


def enabled_by_environment() -> Optional[bool]:
    """The default FTUNE_CPU_SPEEDUPS sets: False for 0/false/no/off, True for 1/true/yes/on, else None."""
    raw = os.environ.get(ENVIRONMENT, "").strip().lower()
    return False if raw in ("0", "false", "no", "off") else True if raw in ("1", "true", "yes", "on") else None


@contextlib.contextmanager
def cpu_speedups(trainer, enabled: bool = True):
    """Around `trainer.train(...)`: while the trainer's model trains on a CPU, the speed-ups that fit it (eager
    attention, the first-token last layer, ftune's dropout in training steps); the model's own again on exit."""
    with contextlib.ExitStack() as undo:
        if enabled and trainer.args.device.type == "cpu":
            _apply(trainer, undo)
        yield


def _apply(trainer, undo: contextlib.ExitStack) -> None:
    from ftune.cpu import attention, first_token

    model = trainer.model
    if attention.use_eager_attention(model):
        undo.callback(attention.restore_attention, model)
    if first_token.first_token_last_layer(model):  # it checks for itself which models it fits
        undo.callback(first_token.restore_last_layer, model)
    # A compiled graph or recomputed activations would draw masks outside the training step: PyTorch's dropout there.
    if not (trainer.args.torch_compile or trainer.args.activation_checkpointing):
        undo.enter_context(_dropout_in_training_steps(trainer))


@contextlib.contextmanager
def _dropout_in_training_steps(trainer):
    """ftune's dropout in each training step of `trainer` only: the evaluations during training are untouched."""
    from ftune.cpu.dropout import cpu_dropout

    own_step = trainer.training_step

    def training_step(*args, **kwargs):
        with cpu_dropout():
            return own_step(*args, **kwargs)

    trainer.training_step = training_step  # on this trainer only, for as long as it trains
    try:
        yield
    finally:
        del trainer.training_step


@contextlib.contextmanager
def scoring_speedups(model, device):
    """Around a forward pass that predicts: on a CPU, the first-token last layer of a BERT-family classifier (the
    logits are the whole layer's to float rounding, so answers stay those of the model as saved); the model's own
    layer again on exit. Off with FTUNE_CPU_SPEEDUPS=0 (prediction has no --no-cpu-speedups)."""
    from ftune.cpu import first_token

    applied = (device.type == "cpu" and enabled_by_environment() is not False
               and first_token.first_token_last_layer(model))
    try:
        yield
    finally:
        if applied:
            first_token.restore_last_layer(model)


@contextlib.contextmanager
def process_speedups(argv: Sequence[str]):
    """Around a whole `ftune` process: collect young objects less often, keep freed memory (ftune.cpu.memory), and
    skip Python's last garbage collection when the command ends without an error. Off where the command line says
    --no-cpu-speedups, or FTUNE_CPU_SPEEDUPS=0 and it does not say --cpu-speedups (a YAML or --set value is read
    only after the process has started)."""
    flags = [arg for arg in argv if arg in ("--cpu-speedups", "--no-cpu-speedups")]
    enabled = flags[-1] == "--cpu-speedups" if flags else enabled_by_environment() is not False
    if not enabled:
        yield
        return
    from ftune.cpu.memory import keep_freed_memory

    # Importing torch, transformers and datasets leaves ~435,000 objects; at Python's default threshold (a collection
    # every 700 new objects) that is ~1,000 collections on the way, ~100 of them over the older generations too.
    # Every 20,000 new objects frees cycles promptly all the same.
    gc.set_threshold(20_000, *gc.get_threshold()[1:])
    keep_freed_memory()  # training steps reuse freed memory instead of faulting in fresh pages
    yield
    # The process ends next: everything it wrote is closed. Python's last garbage collection would walk every object
    # torch and transformers made only to free memory the exit frees.
    gc.freeze()
