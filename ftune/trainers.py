"""The Trainer every ftune task runs — transformers' own, with held-out rows scored in their original order,
a stop at the first non-finite loss and a checkpoint before a signal stops it — its callbacks, and the inference
Trainer that `ftune eval` and `ftune predict` score with.

transformers 5 applies `train_sampling_strategy="group_by_length"` to evaluation batches too. ftune groups
training batches by length (faster), but pairs each prediction with its row (ids, QA windows, references)
by position, so evaluation must keep the rows in order. Every task's Trainer class derives from FtuneTrainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments

from ftune.errors import RunFailed, RunInterrupted


class FtuneTrainer(Trainer):
    """Trainer with in-order evaluation that stops at the first non-finite training loss, and after a checkpoint
    when a stop signal arrives (ftune.signals)."""

    # The classification, QA and seq2seq heads return a mean over their own batch, so the loss must be divided by
    # the accumulation steps. transformers would not divide when a model's forward takes **kwargs and the batch has
    # labels (it reads that as "normalised by num_items_in_batch"): --grad-accum N multiplied the classify and
    # summarize losses and gradients by N (tests/test_summarize.py). The Trainer reads this attribute from
    # transformers 5.19 on (tests/test_compat.py checks that it still does). The causal-LM trainer leaves the
    # decision to transformers: those models do normalise by the token count.
    loss_is_scaled_for_ga = False

    def train(self, *args, **kwargs):
        """Trainer.train; a stop signal while it trains ends it after the current step and a complete checkpoint
        (StopOnSignal), and then raises RunInterrupted."""
        from ftune import signals

        stop = StopOnSignal()
        self.add_callback(stop)  # after ftune's checkpoint callbacks: ThrottledCheckpoints must not cancel its save
        try:
            with signals.deferred():
                output = super().train(*args, **kwargs)
        finally:
            self.remove_callback(stop)
        if stop.signal:
            raise stop.interrupted(self.state.global_step)
        return output

    def get_resumed_dataloader(self, dataloader, num_batches):
        if self.state.global_step >= self.state.max_steps:
            # Resumed from a checkpoint of the last step (a stop signal's) where that step ends mid-epoch: transformers
            # would train one step past --max-steps. Nothing is left to train.
            return []
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _save_checkpoint(self, model, trial):
        # transformers deletes the checkpoints beyond save_total_limit at the end of _save_checkpoint, before the
        # callbacks' on_save, where CheckpointMarker marks the new one complete: a kill in between left no complete
        # checkpoint. CheckpointMarker drops the older ones once the new one is marked. (The limit reads None in the
        # checkpoint's training_args.bin, which a resume does not read.) A private hook: no public one runs between
        # a checkpoint's writing and its rotation (tests/test_compat.py checks its signature and that it rotates).
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit

    def _get_eval_sampler(self, eval_dataset):
        # A private hook: the public get_eval_dataloader/get_test_dataloader build their loaders through it, and
        # replacing them would mean rebuilding the loader from other private parts (column removal, accelerate's
        # preparation). tests/test_compat.py checks that both loaders still keep the rows in order through it.
        if eval_dataset is None or self.args.world_size > 1:
            return None  # as the base Trainer: with several ranks accelerate shards the rows in order
        return SequentialSampler(eval_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            # The weights are already being pushed where no later step recovers from: stop now, keep checkpoints.
            step = self.state.global_step + 1
            precision = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32"
            raise RunFailed(f"the training loss is {loss.float().mean().item()} at step {step} (learning rate "
                            f"{self.args.learning_rate:g}, {precision}); lower --lr"
                            f"{' or train in --precision fp32' if precision != 'fp32' else ''}; the run's "
                            "complete checkpoints are kept")
        return loss


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it (see ftune.folders), then removes the
    checkpoints beyond save_total_limit (FtuneTrainer leaves that to here): at every moment a complete one exists."""

    def on_save(self, args, state, control, **kwargs):
        from transformers.trainer_utils import rotate_checkpoints

        from ftune.folders import mark_complete

        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                mark_complete(checkpoint)
        if args.should_save:  # as transformers' own rotation: the process that saves
            rotate_checkpoints(output_dir=args.output_dir, save_total_limit=args.save_total_limit,
                               best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)
        return control


class StopOnSignal(TrainerCallback):
    """Stops training after the current optimizer step, with a complete checkpoint, once a stop signal has arrived
    (ftune.signals; FtuneTrainer adds it last, so the checkpoint callbacks' throttle cannot cancel its save).

    Every rank stops at the same step: the signal is agreed on (an all-reduce of one number) at each step's end and
    each evaluation, so a rank the signal reached a moment later still stops with the others. The checkpoint holds
    what an uninterrupted run would have done by then: the step's scheduled evaluation happens first, and an epoch's
    end is left to the Trainer's end-of-epoch pass (its evaluation too) rather than saved before it; so the resumed
    run repeats the uninterrupted one exactly.
    """

    def __init__(self):
        self.signal = 0                        # the agreed stop signal; 0 while there is none
        self.training = False
        self.saved_step: Optional[int] = None  # the step of the last checkpoint written

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self._agree(args):
            control.should_training_stop = True
            if not _loop_ends_at(state):  # else the end-of-epoch pass that follows saves (on_epoch_end)
                control.should_save = control.should_log = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        if self.training and self._agree(args):  # it came during the evaluation: save right after it
            control.should_training_stop = True
            control.should_save = control.should_log = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.signal:
            return control
        if _loop_ends_at(state):  # an uninterrupted run ends its epoch here too: its evaluation as scheduled
            if self.saved_step != state.global_step:
                control.should_save = control.should_log = True
        else:  # training broke off mid-epoch after this step's checkpoint: no epoch ends here
            control.should_evaluate = control.should_save = control.should_log = False
        return control

    def on_save(self, args, state, control, **kwargs):
        self.saved_step = state.global_step
        if self.signal:
            # The Trainer's end of training would delete every checkpoint but the best one (save_total_limit=1) —
            # this one too. Its trainer_state.json has the value already; the model in memory is not used again.
            state.best_model_checkpoint = None
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        self._agree(args)  # a signal during the last step's save: every rank ends alike
        return control

    def _agree(self, args) -> int:
        """The signal to stop for, the same on every rank (the highest number any rank received), or 0."""
        if self.signal:
            return self.signal
        from ftune import console, signals

        local = signals.requested() or 0
        if args.world_size > 1:
            import torch.distributed as td

            if td.is_available() and td.is_initialized():
                agreed = torch.tensor([local], dtype=torch.int64, device=args.device)
                td.all_reduce(agreed, op=td.ReduceOp.MAX)
                local = int(agreed.item())
        if local:
            import signal

            signals.adopt(local)  # a rank that learns of it here ignores the launcher's copy of the signal
            self.signal = local
            if self.training:
                console.info(f"{signal.Signals(local).name}: saving a checkpoint after this step, then stopping")
        return self.signal

    def interrupted(self, step: int) -> RunInterrupted:
        """The exception that ends the command, naming the checkpoint to resume from."""
        if self.saved_step == step:
            return RunInterrupted(self.signal, where=f" at step {step}", resume_from=f"checkpoint-{step}")
        return RunInterrupted(self.signal, where=f" at step {step}")


def _loop_ends_at(state) -> bool:
    """Whether the Trainer's loop ends its epoch at this step in any case: the epoch's last step, or the run's."""
    return state.global_step >= state.max_steps or float(state.epoch or 0).is_integer()


class LogEveryCheckpoint(TrainerCallback):
    """Logs the training loss at every evaluation, checkpoint and the last step, so the log history covers every
    step and the whole run's training loss can be computed from it, across resumes (`whole_run_train_loss`)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate or control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_evaluate or control.should_save:
            control.should_log = True
        return control


class ThrottledCheckpoints(TrainerCallback):
    """Resumable checkpoints at evaluations, but at most one every `minutes` of training (0: at every evaluation),
    and none at the last step, where the finished model is saved anyway. A kill loses at most that much time; a
    short run spends none of it writing optimizer states."""

    def __init__(self, minutes: float):
        self.seconds = 60 * minutes
        self.last = None

    def on_train_begin(self, args, state, control, **kwargs):
        import time

        self.last = time.monotonic()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._throttle(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._throttle(state, control)

    def _throttle(self, state, control):
        import time

        if not control.should_save:
            return control
        if state.global_step >= state.max_steps or time.monotonic() - self.last < self.seconds:
            control.should_save = False
        else:
            self.last = time.monotonic()
        return control


class BestModel(TrainerCallback):
    """Keeps the best model by the main metric in `folder` (its trainable weights, written when an evaluation beats
    the best so far) and puts it back into the model when training ends. Checkpoints are then only for resuming;
    the record survives a kill and is dropped on resume when it is from after the checkpoint resumed from."""

    RECORD = "best.json"
    WEIGHTS = "model.safetensors"

    def __init__(self, folder: Path, metric: str, greater_is_better: bool):
        self.folder, self.metric, self.greater = Path(folder), metric, greater_is_better
        self.best: Optional[float] = None

    def _record(self) -> Optional[dict]:
        import json

        path = self.folder / self.RECORD
        return json.loads(path.read_text()) if path.is_file() else None

    def on_train_begin(self, args, state, control, **kwargs):
        import shutil

        record = self._record()
        if record is not None and record["step"] > state.global_step:
            if state.is_world_process_zero:
                shutil.rmtree(self.folder)  # from after the checkpoint this run resumes from: it will be redone
            record = None
        self.best = record["metric"] if record else None
        return control

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None or model is None:
            return control
        if self.best is not None and not (value > self.best if self.greater else value < self.best):
            return control
        self.best = value
        if state.is_world_process_zero:
            self._write(model, state.global_step, value)
        return control

    def _write(self, model, step: int, value: float) -> None:
        import json
        import shutil

        from safetensors.torch import save_file

        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / self.WEIGHTS))
        (tmp / self.RECORD).write_text(json.dumps({"step": step, "metric": value}) + "\n")
        shutil.rmtree(self.folder, ignore_errors=True)
        tmp.rename(self.folder)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from ftune import distributed as dist

        dist.wait_for_everyone()  # the main process wrote the weights every rank reads
        record = self._record()
        if record is None or model is None or record["step"] == state.global_step:
            return control  # the model in hand is the best one
        from safetensors.torch import load_file

        best = load_file(str(self.folder / self.WEIGHTS))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return control


def whole_run_train_loss(log_history: list[dict]) -> Optional[float]:
    """The mean training loss over every step of the run: each logged loss weighs the steps since the last."""
    total, previous = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    return total / previous if previous else None


def inference_trainer(task, config, state, model, tokenizer, *, precision: str, batch_size: Optional[int],
                      scratch: str, phase: str = "evaluating"):
    """The task's Trainer, used only to predict: the batching, precision and collation of training. `phase` names
    its progress bar."""
    import torch

    from ftune.precision import precision_arguments, scoring_precision

    on_gpu = torch.cuda.is_available()
    precision = scoring_precision(precision)
    args = TrainingArguments(
        output_dir=scratch,
        per_device_eval_batch_size=batch_size or config.eval_batch_size or 2 * config.batch_size,
        report_to="none",
        use_cpu=not on_gpu,
        disable_tqdm=True,
        average_tokens_across_devices=False,  # else the loss is scaled by the world size (see ftune.train)
        **precision_arguments(precision),
    )
    trainer = task.trainer_class()(model=model, args=args, processing_class=tokenizer,
                                   data_collator=task.collator(config, tokenizer, model, None),
                                   **task.trainer_kwargs(config, state))
    from ftune.progress import attach

    attach(trainer, scoring=phase)
    return trainer
