"""The one training spine every task runs through.

    plan the run folder (checks only) -> load data -> columns -> held-out split -> tokenizer
    -> the task's checks and state -> model (+ LoRA) -> features        [nothing on disk has changed yet]
    -> claim the folder (the target, or a staging folder under --overwrite) -> ftune.yaml, split.json
    -> Trainer (trackers log under RUN/logs) -> train (complete checkpoints marked) -> save model
    -> score the held-out split -> eval_results.json, eval_predictions.jsonl -> trainer_state.json
    -> pictures (learning curves, the task's own) -> model card
    -> train_results.json (written last: the run is finished) -> staging swapped into place

Only rank 0 writes files and prints; every rank computes the same split from the same seed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from ftune import console
from ftune import distributed as dist
from ftune.config import TrainConfig
from ftune import signals
from ftune.errors import RunInterrupted, UsageError
from ftune.hub import ensure_offline_if_unreachable
from ftune.rundir import RunDir
from ftune.tasks.state import TaskState


def default_output_dir(task, config: TrainConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{task.name}-{task.model_source(config).display_name}-{stamp}")


def run_training(task, config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 held_out: Optional[dict[str, Any]] = None, callbacks: Sequence[Any] = ()) -> Path:
    """Train one run end to end and return its directory.

    Every check that bad input can fail (options, data, columns, labels, the model, the features) runs before
    anything on disk changes; under --overwrite the old run stays as it is until the new one has finished.
    `held_out`: a split.json record the run must score exactly (a sweep's trials share one); the run refuses to
    start when the data gives other held-out rows. `callbacks`: Trainer callbacks the caller adds.
    """
    from ftune.folders import plan_run_folder
    from ftune.tracking import require_installed

    ensure_offline_if_unreachable()  # before transformers/datasets are imported: they read it once
    require_installed(config.report_to)
    if not config.output_dir:
        config = config.replace(output_dir=dist.broadcast_object(default_output_dir(task, config)))
    task.model_source(config).require()
    # Checks only, before any data is read: a folder that cannot be written is refused now, not after tokenising.
    plan = plan_run_folder(Path(config.output_dir), resume=resume, overwrite=overwrite) \
        if dist.is_main_process() else None
    plan = dist.broadcast_object(plan)
    if resume and not plan.resume and not plan.clear:
        # Requeue scripts pass --resume every time, the first time too.
        console.note(f"--resume: {plan.target} holds no run to continue yet; starting a new run")
    prepared = prepare(task, config, held_out=held_out)
    if plan.resume and dist.is_main_process():
        check_resume_matches(plan.workdir, task, config, prepared)
    return _train_in(plan, task, config, prepared, callbacks)


@dataclass
class Prepared:
    """Everything a run needs before it touches the disk, each part checked."""

    split: Any
    tokenizer: Any
    state: TaskState
    model: Any
    train_features: Any
    eval_features: Any
    precision: str


def prepare(task, config: TrainConfig, held_out: Optional[dict[str, Any]] = None) -> Prepared:
    """Data, held-out split, tokenizer, the task's checks and state, model (+ LoRA) and features."""
    from transformers import set_seed

    from ftune.data import held_out_differences
    from ftune.lora import wrap_with_lora
    from ftune.precision import check_4bit_support, resolve_precision

    set_seed(config.seed)
    precision = resolve_precision(config.precision)
    if config.load_in_4bit:
        check_4bit_support()
    columns, split = load_held_out_split(task, config)
    differs = held_out_differences(split.record, held_out) if held_out is not None else []
    if differs:
        raise UsageError(f"the held-out rows of {config.data} differ from the split this run must score "
                         f"({'; '.join(differs)}); the data changed since the split was recorded: restore it, or "
                         "start over")
    tokenizer = task.load_tokenizer(config)
    task.check_input_length(config, tokenizer)
    state = task.prepare_state(config, split, columns)
    metric_module = task.metric_module_for(state)
    if metric_module is not None:
        from ftune.metrics import load_metric

        # Before training, so that a metric that cannot load fails now, not after the first epoch; importing
        # evaluate (it imports transformers' pipelines) takes most of a second, outside the training time.
        load_metric(metric_module)
    model = task.load_model(config, tokenizer, state)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and enables input gradients, so adapters train stably over 4-bit weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.lora:
        model = wrap_with_lora(model, config, task.peft_task_type)
    with console.phase("tokenising", len(split.train) + len(split.eval), "rows") as tokenising:
        train_features = task.features(config, tokenizer, split.train, state, purpose="train")
        tokenising.advance(len(split.train))
        eval_features = task.features(config, tokenizer, split.eval, state, purpose="eval")
        tokenising.advance(len(split.eval))
    return Prepared(split=split, tokenizer=tokenizer, state=state, model=model, precision=precision,
                    train_features=train_features, eval_features=eval_features)


def load_held_out_split(task, config: TrainConfig):
    """The data's columns by role and the held-out split (checked); every rank computes the same."""
    from ftune.data import build_held_out_split

    source = task.load_source(config, config.data, config.data_config)
    first = source[config.train_split] if config.train_split in source else next(iter(source.values()))
    columns = task.resolve_columns(config, list(first.column_names))
    split = build_held_out_split(
        source, data=config.data, data_config=config.data_config, train_split=config.train_split,
        eval_split=config.eval_split, val_fraction=config.val_fraction,
        seed=config.seed if config.split_seed is None else config.split_seed,
        max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
        stratify=task.stratify_by(config, columns))
    return columns, split


# Options that do not change what a run learns: a resumed run may differ in them.
NOT_RESULT_CHANGING = ("output_dir", "logging_steps", "eval_batch_size", "report_to")


def check_resume_matches(workdir: Path, task, config: TrainConfig, prepared: Prepared) -> None:
    """Raise UsageError listing what differs between this command and the run it would continue."""
    import json

    from ftune.config import default_of, read_yaml_file
    from ftune.rundir import CONFIG_FILE, SPLIT_FILE, read_state

    saved_file = workdir / CONFIG_FILE
    if not saved_file.is_file():
        return  # the earlier attempt stopped before writing its configuration: nothing to continue
    saved = read_yaml_file(saved_file, f"the run's {CONFIG_FILE}") or {}
    info = saved.pop("run", {})
    now = config.to_dict()
    # An option added to ftune after the run was written is absent from its ftune.yaml: the run had its default.
    for key in now.keys() - saved.keys():
        saved[key] = default_of(task.options_class, key)
    differs = [f"{key} (run: {saved.get(key)!r}, now: {now.get(key)!r})" for key in now
               if key not in NOT_RESULT_CHANGING and saved.get(key) != now.get(key)]
    if info.get("task") != task.name:
        differs.insert(0, f"task (run: {info.get('task')}, now: {task.name})")
    saved_split = json.loads((workdir / SPLIT_FILE).read_text()) if (workdir / SPLIT_FILE).is_file() else {}
    split = prepared.split.record
    if any(saved_split.get(k) != split.get(k) for k in ("fingerprint", "indices", "train_rows", "eval_split")):
        differs.append("data (the held-out rows differ from the run's split.json)")
    if info.get("task") == task.name:  # else its state is another task's, and the task differs already
        differs += [f"{name} derived from the data (run: {saved_value!r}, now: {value!r})"
                    for name, saved_value, value in read_state(task, info, saved_file).differences(prepared.state)]
    if differs:
        raise UsageError(f"--resume would continue {workdir} with a different command: {'; '.join(differs)}; rerun "
                         f"with the run's options (its ftune.yaml), or start a new run with another --output-dir")


def _train_in(plan, task, config: TrainConfig, prepared: Prepared, callbacks: Sequence[Any]) -> Path:
    from ftune.folders import claim_run_folder, drop_torn_checkpoints, last_complete_checkpoint, put_in_place
    from ftune.rundir import LOGS_FOLDER
    from ftune.tracking import logs_in

    main = dist.is_main_process()
    run = RunDir(plan.workdir)
    claim = None
    try:
        if main:
            # Atomic: of several commands reaching for one folder, one holds it; the others stop here, having
            # changed nothing (ftune.folders).
            claim = claim_run_folder(plan)
            if plan.resume:
                for torn in drop_torn_checkpoints(plan.workdir):
                    console.note(f"skipping {torn.name}: its save never completed")
        dist.wait_for_everyone()
        checkpoint = last_complete_checkpoint(plan.workdir) if plan.resume else None
        if main and checkpoint is None:
            run.write_config(task.name, config, prepared.state, prepared.precision, location=plan.target)
            run.write_split(prepared.split.record)
        with logs_in(plan.workdir / LOGS_FOLDER, config.report_to):  # trackers write into the run while it trains
            _train(task, config, run, plan.target, prepared, checkpoint, resume=plan.resume, callbacks=callbacks)
        if main and plan.staged:
            put_in_place(claim, plan)
        dist.wait_for_everyone()
        return plan.target
    except UsageError:
        # Bad input found after the folder was claimed: remove what this run wrote (only that), unless it
        # continues a run or has a checkpoint to resume from.
        if claim is not None and not plan.resume and last_complete_checkpoint(claim.path) is None:
            claim.undo()
        raise
    finally:
        if claim is not None:
            claim.release()


def _train(task, config: TrainConfig, run: RunDir, target: Path, prepared: Prepared, checkpoint, *,
           resume: bool, callbacks: Sequence[Any] = ()) -> None:
    from ftune.cpu import cpu_speedups
    from ftune.progress import report_end, report_start

    started = time.time()
    main = dist.is_main_process()
    split, tokenizer, state = prepared.split, prepared.tokenizer, prepared.state
    eval_inputs, eval_order = task.scoring_inputs(prepared.eval_features)
    trainer = build_trainer(task, config, state, run.path, prepared.model, tokenizer, prepared.train_features,
                            eval_inputs, task.metrics_function(config, tokenizer, state, split.eval,
                                                               prepared.eval_features, eval_order),
                            prepared.precision, run_name=target.name, extra_callbacks=callbacks)
    world = dist.world_size()
    effective = config.batch_size * config.grad_accum * world
    report_start(task, config, split, prepared.model, prepared.precision, world, target)
    if resume:
        console.info(f"resuming from {checkpoint.name}" if checkpoint else
                     "no complete checkpoint to resume from yet; starting the run from the beginning")
    # The CPU speed-ups that fit the model (ftune.cpu) apply while it trains and are undone before it is scored and
    # saved, so the final figures are those `ftune eval` computes with the model as saved.
    with cpu_speedups(trainer, enabled=config.cpu_speedups):
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    with _stop_after_training(trainer, world):
        evaluation, train_metrics = _score_and_write(task, config, run, target, trainer, prepared, train_output,
                                                     started, effective, world)
    with signals.deferred():  # the run is finished on disk: a stop signal now has nothing left to save
        if main:
            run.write_train_results(train_metrics)  # last: marks the run finished
        report_end(target, evaluation, len(split.eval), train_metrics)


@contextlib.contextmanager
def _stop_after_training(trainer, world: int):
    """The trained model is scored and its files written. A stop signal meanwhile (ftune.signals) saves a complete
    checkpoint of the trained state before the command ends, so `--resume` scores and writes without training again;
    with several ranks, which score together, the signal waits until the run is written."""
    if world > 1:
        with signals.deferred():
            yield
        return
    try:
        yield
    except RunInterrupted as stop:
        trainer._save_checkpoint(trainer.model, trial=None)  # as the Trainer saves one; CheckpointMarker marks it
        trainer.control = trainer.callback_handler.on_save(trainer.args, trainer.state, trainer.control)
        step = trainer.state.global_step
        raise RunInterrupted(stop.signum, where=f" after training, at step {step}",
                             resume_from=f"checkpoint-{step}") from None


def _score_and_write(task, config: TrainConfig, run: RunDir, target: Path, trainer, prepared: Prepared,
                     train_output, started: float, effective: int, world: int):
    """The final scoring, the model, results, state, pictures and model card (all but train_results.json)."""
    from ftune.trainers import whole_run_train_loss

    main = dist.is_main_process()
    split, state = prepared.split, prepared.state
    trainer.save_model(str(run.path))
    evaluation = score_held_out(task, config, trainer, prepared)
    train_metrics = None
    if main:
        from ftune.modelcard import model_card
        from ftune.pictures import draw_pictures, learning_curves_picture, task_pictures

        run.write_evaluation(evaluation)
        trainer.save_state()
        train_metrics = dict(train_output.metrics)
        whole_run = whole_run_train_loss(trainer.state.log_history)
        if whole_run is not None:  # after a resume, the Trainer's own figure covers the resumed steps only
            train_metrics["train_loss"] = whole_run
        train_metrics.update({"train_samples": len(split.train), "effective_batch_size": effective,
                              "world_size": world, "wall_seconds": round(time.time() - started, 1)})
        pictures = draw_pictures(run, [learning_curves_picture(trainer.state.log_history, *task.best_metric(config),
                                                               also=task.curve_metrics),
                                       *task_pictures(task, config, state, evaluation)])
        run.write_model_card(model_card(target, task, config, state, split.record, evaluation.metrics, pictures))
        run.remove_checkpoints()
    return evaluation, train_metrics


def score_held_out(task, config: TrainConfig, trainer, prepared: Prepared):
    """The final figures: the trained model scored on the held-out rows as `ftune eval` scores them (in the
    scoring precision, ftune.precision.scoring_precision), so they are reproducible row for row."""
    import tempfile

    from ftune.trainers import inference_trainer

    # Without the mixed-precision wrapper accelerate put around forward during training.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    with tempfile.TemporaryDirectory(prefix="ftune-score-") as scratch:
        scorer = inference_trainer(task, config, prepared.state, model, prepared.tokenizer,
                                   precision=prepared.precision, batch_size=None, scratch=scratch)
        return task.evaluate(config, scorer, prepared.tokenizer, prepared.state, prepared.split.eval,
                             prepared.split.eval_ids, features=prepared.eval_features)


BEST_MODEL_FOLDER = "best-model"


def sharded_training(config: TrainConfig) -> bool:
    """Whether the weights are sharded over processes (an FSDP or DeepSpeed accelerate config)."""
    if not config.accelerate_config:
        return False
    import yaml

    from ftune.accelerate_configs import config_path

    data = yaml.safe_load(config_path(config.accelerate_config).read_text()) or {}
    return data.get("distributed_type") in ("FSDP", "DEEPSPEED")


def build_trainer(task, config: TrainConfig, state: TaskState, output_dir: Path, model, tokenizer, train_ds,
                  eval_ds, compute_metrics, precision: str, run_name: Optional[str] = None,
                  extra_callbacks: Sequence[Any] = ()):
    """The task's Trainer with ftune's defaults: dynamic padding, length-grouped batches, evaluation and a
    checkpoint every epoch, the best model by the task's main metric kept at the end; `run_name` names the run
    in the experiment trackers."""
    import torch
    from transformers import EarlyStoppingCallback, TrainingArguments

    from ftune.precision import precision_arguments
    from ftune.tracking import tracker_arguments

    on_gpu = torch.cuda.is_available()
    best_metric, greater_is_better = task.best_metric(config)
    # ftune keeps the best weights itself (BestModel), so checkpoints are only for resuming and can be rare; with
    # sharded weights (FSDP, DeepSpeed) the Trainer's own way: a checkpoint at every evaluation, the best reloaded.
    keeps_best = not sharded_training(config)
    if config.eval_steps:
        schedule = {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": config.eval_steps,
                    "save_steps": config.eval_steps}
    elif config.max_steps:
        schedule = {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": config.max_steps,
                    "save_steps": config.max_steps}
    else:
        schedule = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size or 2 * config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_total_limit=1 if keeps_best else 2,  # the latest (and the best, when checkpoints keep it)
        load_best_model_at_end=not keeps_best,
        metric_for_best_model=best_metric,
        greater_is_better=greater_is_better,
        activation_checkpointing=config.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        **tracker_arguments(config.report_to, run_name or output_dir.name),
        use_cpu=not on_gpu,
        tf32=True if on_gpu and torch.cuda.get_device_capability()[0] >= 8 else None,
        # Each rank's loss is its own mean; averaging token counts across ranks would scale the logged loss
        # by the world size for tasks whose loss is already a mean (transformers issue 35078).
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False if dist.world_size() > 1 else None,
        disable_tqdm=True,  # ftune.progress reports instead
        optim="adamw_torch_fused",  # one kernel over all parameters: on CPU too (4x faster steps, bench/)
        torch_compile=config.compile,
        **schedule,
        **precision_arguments(precision),
    )
    from ftune.trainers import BestModel, CheckpointMarker, LogEveryCheckpoint, ThrottledCheckpoints

    callbacks = [CheckpointMarker(), LogEveryCheckpoint()]
    if keeps_best:
        callbacks += [BestModel(output_dir / BEST_MODEL_FOLDER, best_metric, greater_is_better),
                      ThrottledCheckpoints(config.checkpoint_minutes)]
    callbacks += extra_callbacks
    if config.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping))
    pad_multiple = 8 if on_gpu and precision in ("bf16", "fp16") else None  # tensor-core friendly shapes
    trainer = task.trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=task.collator(config, tokenizer, model, pad_multiple),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        **task.trainer_kwargs(config, state),
    )
    from ftune.progress import attach

    attach(trainer, best_metric=best_metric, greater_is_better=greater_is_better)
    return trainer
