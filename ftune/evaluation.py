"""`ftune eval RUN`: score a finished run on its recorded held-out split, or on other data.

The recorded split is rescored into the run itself. Other data (`--data`, or another `--split`) never replaces
the run's recorded results: its results go to `--output-dir`, or else to a folder of their own inside the run,
`RUN/evals/<data>-<split>/`, and the command says where.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ftune import console
from ftune.errors import UsageError
from ftune.folders import check_writable_folder, mark_output, prepare_output_folder
from ftune.hub import ensure_offline_if_unreachable
from ftune.pictures import draw_pictures, task_pictures
from ftune.rundir import EVAL_PREDICTIONS, EVAL_RESULTS, RunDir, open_run


def evaluate_run(run_path: Path, *, data: Optional[str] = None, data_config: Optional[str] = None,
                 split: Optional[str] = None, output_dir: Optional[Path] = None, batch_size: Optional[int] = None,
                 max_eval_samples: Optional[int] = None):
    """Score the run and write eval_results.json / eval_predictions.jsonl; returns the Evaluation."""
    ensure_offline_if_unreachable()
    run = open_run(run_path, exports=True)
    task, config = run.task, run.config
    other_data = data is not None or split is not None
    if output_dir is not None:  # checked before the data loads
        _output_folder(run, Path(output_dir), other_data=other_data)
    rows, ids, described, default_target = _rows_to_score(run, data, data_config, split)
    if max_eval_samples is not None:
        rows, ids = rows.select(range(min(max_eval_samples, len(rows)))), ids[:max_eval_samples]
    target = RunDir(_output_folder(run, Path(output_dir) if output_dir else default_target, other_data=other_data))

    from ftune.engines import open_engine

    with open_engine(run, batch_size=batch_size) as engine:
        evaluation = task.evaluate(config, engine.scorer(config), engine.tokenizer, run.state, rows, ids)

    if target.path.resolve() != run.path.resolve():
        mark_output(target.path, "eval", run=str(run.path.resolve()))
    target.write_evaluation(evaluation)
    pictures = draw_pictures(target, task_pictures(task, config, run.state, evaluation))
    closing = "\n".join([f"wrote {target.path / EVAL_RESULTS} and {target.path / EVAL_PREDICTIONS}",
                         *(f"drew {target.path / picture.file}" for picture in pictures)])
    console.final(console.metrics_table(evaluation.metrics, title=f"{described} ({len(rows):,} rows)"),
                  details=evaluation.table, closing=closing, run=str(run.path), scored=described, rows=len(rows),
                  metrics=evaluation.metrics, output_dir=str(target.path),
                  pictures=[str(target.path / picture.file) for picture in pictures])
    return evaluation


def _output_folder(run, path: Path, *, other_data: bool) -> Path:
    """Where results go: the run itself for its recorded split; otherwise a folder ftune may write (new, empty,
    or an earlier evaluation output) that is not a run and does not hold one."""
    if path.resolve() == run.path.resolve():
        if other_data:
            raise UsageError("results on other data never replace the run's recorded results; pass another "
                             "--output-dir or leave it out (they go to a folder inside the run)")
        check_writable_folder(path)
        return path
    return prepare_output_folder(path, "eval", refuse=(run.path,))


def _rows_to_score(run, data, data_config, split):
    """(rows, ids, how to describe them, where their results go by default)."""
    from ftune.data import EVAL_SPLIT_NAMES, reload_held_out_split, row_ids

    task, config = run.task, run.config

    def load(source: str, source_config: Optional[str]):
        return task.load_source(config, source, source_config)

    if data is None and split is None:
        if not run.split:
            raise UsageError(f"run {run.path} has no split.json; pass --data (and --split) to choose the rows")
        rows, ids = reload_held_out_split(run.split, load)
        return rows, ids, "recorded held-out split", run.path
    source_name = data or run.split.get("source") or config.data
    source = load(source_name, data_config if data else (data_config or config.data_config))
    if split is None:
        split = next((s for s in EVAL_SPLIT_NAMES if s in source), None) or next(iter(source))
    if split not in source:
        raise UsageError(f"no split '{split}' in {source_name}; the splits are: {', '.join(source)}")
    rows = source[split]
    described = f"{source_name} [{split}]"
    task.check_rows(config, run.state, rows, described)
    return rows, row_ids(rows, range(len(rows))), described, run.path / "evals" / _folder_name(source_name, split)


def _folder_name(source: str, split: str) -> str:
    """A folder name for results on other data: the data's name and the split, in safe characters."""
    stem = Path(source).stem if Path(source).suffix else Path(source).name or source
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{stem}-{split}").strip("-") or "data"
