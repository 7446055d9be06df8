"""The one training spine every task runs through.

    claim the run directory -> load data -> columns -> held-out split (split.json) -> tokenizer
    -> the task's checks and state (ftune.yaml) -> model (+ LoRA) -> features -> Trainer -> train
    -> save model -> score the held-out split -> eval_results.json, eval_predictions.jsonl -> model card
    -> trainer_state.json -> train_results.json (written last: the run is finished)

Only rank 0 writes files and prints; every rank computes the same split from the same seed.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ftune import console
from ftune import distributed as dist
from ftune.config import TrainConfig
from ftune.errors import UsageError
from ftune.hub import ensure_offline_if_unreachable
from ftune.rundir import RunDir


def default_output_dir(task, config: TrainConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{task.name}-{task.model_source(config).display_name}-{stamp}")


def run_training(task, config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train one run end to end and return its directory."""
    ensure_offline_if_unreachable()  # before transformers/datasets are imported: they read it once
    if not config.output_dir:
        config = config.replace(output_dir=dist.broadcast_object(default_output_dir(task, config)))
    run = RunDir(Path(config.output_dir))
    task.model_source(config).require()
    created = not run.path.exists()
    if dist.is_main_process():
        run.claim(resume=resume, overwrite=overwrite)
    dist.wait_for_everyone()
    try:
        return _train(task, config, run, resume=resume)
    except UsageError:
        # Bad input found before any training: leave no half-made run folder behind.
        if created and dist.is_main_process() and run.last_checkpoint() is None:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    finally:
        if dist.is_main_process() and run.path.exists():
            run.release()


def _train(task, config: TrainConfig, run: RunDir, *, resume: bool) -> Path:
    from transformers import set_seed

    from ftune.data import build_held_out_split
    from ftune.lora import trainable_summary, wrap_with_lora
    from ftune.precision import check_4bit_support, resolve_precision

    started = time.time()
    set_seed(config.seed)
    precision = resolve_precision(config.precision)
    if config.load_in_4bit:
        check_4bit_support()
    main = dist.is_main_process()

    source = task.load_source(config, config.data, config.data_config)
    first = source[config.train_split] if config.train_split in source else next(iter(source.values()))
    columns = task.resolve_columns(config, list(first.column_names))
    split = build_held_out_split(
        source, data=config.data, data_config=config.data_config, train_split=config.train_split,
        eval_split=config.eval_split, val_fraction=config.val_fraction, seed=config.seed,
        max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
        stratify=task.stratify_by(config, columns))
    tokenizer = task.load_tokenizer(config)
    state = task.prepare_state(config, split, columns)
    if main:
        run.write_config(task.name, config, state, precision)
        run.write_split(split.record)

    model = task.load_model(config, tokenizer, state)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and enables input gradients, so adapters train stably over 4-bit weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.lora:
        model = wrap_with_lora(model, config, task.peft_task_type)
    train_features = task.features(config, tokenizer, split.train, state, purpose="train")
    eval_features = task.features(config, tokenizer, split.eval, state, purpose="eval")

    trainer = build_trainer(task, config, state, run.path, model, tokenizer, train_features,
                            task.model_inputs(eval_features),
                            task.metrics_function(config, tokenizer, state, split.eval, eval_features), precision)
    world = dist.world_size()
    effective = config.batch_size * config.grad_accum * world
    console.info(f"ftune {task.name}: {config.model} on {config.data} — {len(split.train):,} train rows, "
                 f"{len(split.eval):,} held-out rows ({split.record['method']}: {split.record['eval_split']})")
    console.info(f"{'LoRA' if config.lora else 'full fine-tuning'}: {trainable_summary(model)}; precision "
                 f"{precision}; effective batch {effective} = {config.batch_size} per device x {world} process(es) "
                 f"x {config.grad_accum} accumulation; output {run.path}")

    checkpoint = run.last_checkpoint() if resume else None
    if resume and checkpoint is None:
        console.info("no checkpoint to resume from yet; starting the run from the beginning")
    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    trainer.save_model(str(run.path))
    evaluation = task.evaluate(config, trainer, tokenizer, state, split.eval, split.eval_ids,
                               features=eval_features)
    if main:
        from ftune.modelcard import model_card

        run.write_evaluation(evaluation)
        trainer.save_state()
        train_metrics = dict(train_output.metrics)
        train_metrics.update({"train_samples": len(split.train), "effective_batch_size": effective,
                              "world_size": world, "wall_seconds": round(time.time() - started, 1)})
        run.write_model_card(model_card(run.path, task, config, state, split.record, evaluation.metrics))
        run.remove_checkpoints()
        run.write_train_results(train_metrics)  # last: marks the run finished
    console.info(console.metrics_table(evaluation.metrics, title=f"held-out metrics ({len(split.eval):,} rows)"))
    if evaluation.table:
        console.info(evaluation.table)
    console.info(f"run saved to {run.path}")
    dist.wait_for_everyone()
    return run.path


def build_trainer(task, config: TrainConfig, state: dict[str, Any], output_dir: Path, model, tokenizer, train_ds,
                  eval_ds, compute_metrics, precision: str):
    """The task's Trainer with ftune's defaults: dynamic padding, length-grouped batches, evaluation and a
    checkpoint every epoch, the best model by the task's main metric kept at the end."""
    import torch
    from transformers import EarlyStoppingCallback, TrainingArguments

    from ftune.precision import precision_arguments

    on_gpu = torch.cuda.is_available()
    best_metric, greater_is_better = task.best_metric(config)
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
        save_total_limit=2,  # the best and the latest: enough to resume and to restore the best
        load_best_model_at_end=True,
        metric_for_best_model=best_metric,
        greater_is_better=greater_is_better,
        activation_checkpointing=config.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        report_to="none",
        use_cpu=not on_gpu,
        tf32=True if on_gpu and torch.cuda.get_device_capability()[0] >= 8 else None,
        # Each rank's loss is its own mean; averaging token counts across ranks would scale the logged loss
        # by the world size for tasks whose loss is already a mean (transformers issue 35078).
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False if dist.world_size() > 1 else None,
        disable_tqdm=not dist.is_main_process(),
        optim="adamw_torch_fused" if on_gpu else "adamw_torch",
        torch_compile=config.compile,
        **schedule,
        **precision_arguments(precision),
    )
    callbacks = [EarlyStoppingCallback(early_stopping_patience=config.early_stopping)] if config.early_stopping else []
    pad_multiple = 8 if on_gpu and precision in ("bf16", "fp16") else None  # tensor-core friendly shapes
    return task.trainer_class()(
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
