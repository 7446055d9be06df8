"""`ftune eval RUN`: score a finished run on its recorded held-out split (or other data)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ftune.errors import UsageError
from ftune.hub import ensure_offline_if_unreachable
from ftune.report import echo, metrics_table
from ftune.rundir import RunDir, open_run


def evaluate_run(run_path: Path, *, data: Optional[str] = None, data_config: Optional[str] = None,
                 split: Optional[str] = None, output_dir: Optional[Path] = None, batch_size: Optional[int] = None,
                 max_eval_samples: Optional[int] = None):
    """Score the run and write eval_results.json / eval_predictions.jsonl (into the run or `output_dir`)."""
    ensure_offline_if_unreachable()
    run = open_run(run_path)
    from ftune.config import resolve_config
    from ftune.tasks import get_task_entry

    entry = get_task_entry(run.task)
    task = entry.load()
    config = resolve_config(entry.config_class, layers=[("ftune.yaml", run.config)])
    state = run.info.get("state", {})
    rows, described = _rows_to_score(task, config, run, data, data_config, split)
    if max_eval_samples is not None:
        rows = rows.select(range(min(max_eval_samples, len(rows))))

    from ftune.models import load_run_model, load_tokenizer

    tokenizer = load_tokenizer(str(run.path))
    model = load_run_model(run, task)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = inference_trainer(task, config, model, tokenizer, scratch, run.info.get("precision", "fp32"),
                                    batch_size)
        evaluation = task.evaluate(trainer, tokenizer, config, rows, state)

    target = RunDir(Path(output_dir) if output_dir else run.path)
    target.path.mkdir(parents=True, exist_ok=True)
    from ftune.train import write_evaluation

    write_evaluation(target, evaluation)
    echo(metrics_table(evaluation.metrics, title=f"{described} ({len(rows):,} rows)"))
    if evaluation.table:
        echo(evaluation.table)
    echo(f"wrote {target.path / 'eval_results.json'} and {target.path / 'eval_predictions.jsonl'}")
    return evaluation


def _rows_to_score(task, config, run, data, data_config, split):
    from ftune.data import EVAL_SPLIT_NAMES, reload_held_out_split

    if data is None and split is None:
        if not run.split:
            raise UsageError(f"run {run.path} has no split.json; pass --data (and --split) to choose the rows")
        return reload_held_out_split(run.split, lambda d, c: _load(task, config, d, c)), "recorded held-out split"
    source_name = data or run.split.get("source") or config.data
    source = _load(task, config, source_name, data_config if data else (data_config or config.data_config))
    if split is None:
        split = next((s for s in EVAL_SPLIT_NAMES if s in source), None) or next(iter(source))
    if split not in source:
        raise UsageError(f"no split '{split}' in {source_name}; the splits are: {', '.join(source)}")
    rows = source[split]
    task.check_eval_rows(config, run.info.get("state", {}), rows, f"{source_name} [{split}]")
    return rows, f"{source_name} [{split}]"


def _load(task, config, data, data_config):
    config.data, config.data_config = data, data_config
    return task.load_source(config)


def inference_trainer(task, config, model, tokenizer, scratch: str, precision: str, batch_size: Optional[int]):
    """A Trainer used only to predict: same batching, precision and collation as during training."""
    import torch

    from ftune.precision import precision_arguments

    on_gpu = torch.cuda.is_available()
    if precision in ("bf16", "fp16") and not on_gpu:
        precision = "fp32" if precision == "fp16" else precision
    args = task.arguments_class()(
        output_dir=scratch,
        per_device_eval_batch_size=batch_size or config.eval_batch_size or 2 * config.batch_size,
        report_to="none",
        use_cpu=not on_gpu,
        disable_tqdm=True,
        **precision_arguments(precision),
        **task.training_arguments(config),
    )
    return task.trainer_class()(model=model, args=args, processing_class=tokenizer,
                                data_collator=task.collator(config, tokenizer, model, None))
