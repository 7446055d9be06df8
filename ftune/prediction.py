"""`ftune predict RUN`: inference with a finished classify, qa or summarize run."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional

from ftune.errors import UsageError
from ftune.hub import ensure_offline_if_unreachable
from ftune.rundir import open_run, write_jsonl


def predict_run(run_path: Path, *, texts: list[str], text_pairs: list[str], questions: list[str],
                contexts: list[str], input_file: Optional[Path], output: Optional[Path], batch_size: int,
                **extra) -> list[dict]:
    """Predict for the given inputs and write JSON lines (stdout) or a .jsonl/.csv file."""
    ensure_offline_if_unreachable()
    run = open_run(run_path)
    from ftune.tasks import get_task_entry

    task = get_task_entry(run.task).load()
    state = run.info.get("state", {})
    if output is not None and output.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise UsageError(f"--output {output}: use a .jsonl or .csv file name")
    if input_file is not None:
        if texts or questions:
            raise UsageError("give either --input FILE or inline inputs (--text/--question), not both")
        inputs = read_input_file(input_file)
    else:
        inputs = task.inputs_from_options(state, {"texts": texts, "text_pairs": text_pairs, "questions": questions,
                                                  "contexts": contexts, **extra})

    from ftune.models import load_run_model, load_tokenizer

    tokenizer = load_tokenizer(str(run.path))
    model = load_run_model(run, task)
    model.eval()
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    # Inference options given to this command (e.g. --num-beams) override the run's settings.
    settings = {**run.config, **{k: v for k, v in extra.items() if v is not None}}
    results = task.predict(model, tokenizer, settings, state, inputs, batch_size)
    write_predictions(results, output)
    return results


def read_input_file(path: Path) -> list[dict]:
    """Rows of a .csv/.tsv/.json/.jsonl/.parquet file, as dicts."""
    from ftune.data import load_source

    if not path.is_file():
        raise UsageError(f"--input {path} does not exist; pass a .csv, .tsv, .jsonl, .json or .parquet file")
    ds = load_source(str(path))["train"]
    return [dict(row) for row in ds]


def write_predictions(results: list[dict], output: Optional[Path]) -> None:
    if output is None:
        for row in results:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".csv":
        fields = list(dict.fromkeys(k for row in results for k in row))
        with output.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            for row in results:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    else:
        write_jsonl(output, results)
    print(f"wrote {len(results)} predictions to {output}", file=sys.stderr)
