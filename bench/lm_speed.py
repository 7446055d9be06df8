"""Causal-LM SFT throughput: ftune's packed batches against padded batches, on prompt/completion data of varied
lengths, measured side by side.

    python bench/lm_speed.py                      # CPU: a GPT-2-shaped model, random weights, 1 epoch
    python bench/lm_speed.py --device cuda        # a GPU: GPT-2 small (124M), bf16, with MFU; and LoRA

Data: aclsum (PyPI, offline): for each paper and role, the prompt is 1-12 of its abstract and introduction
sentences and a question, the completion the paper's summary sentence of that role (750 rows, 30-500 tokens).
Model: GPT-2 architecture with a byte-level BPE tokenizer trained on that text here (no GPT-2 weights install
offline); on a GPU GPT-2 small's shape. Variants, same rows, model, seed, batch size, lr, one epoch:
  Trainer, padded          a plain Trainer: prompt masked in the labels, DataCollatorForSeq2Seq, random batches
  ftune lm --no-packing    padded batches of like length (ftune's length grouping)
  ftune lm                 packed: a batch in a few rows of several examples kept apart (ftune's default)
tokens/s counts the tokens that are not padding, over the Trainer's train_runtime (ftune's includes its one
evaluation). Rounds are interleaved; median and spread. It also checks, on the first batches, that the packed
loss equals the padded loss of the same examples.

On a GPU (--device cuda) it adds MFU (model FLOPs utilisation: 6 x parameters x tokens/s against the GPU's
bf16 peak, --peak-tflops) and LoRA: ftune lm --lora against a plain transformers + peft training loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def aclsum_rows() -> list[dict]:
    spec = importlib.util.find_spec("aclsum")
    if spec is None:
        sys.exit("error: pip install --no-deps aclsum")
    source = Path(next(iter(spec.submodule_search_locations))) / "dataset"
    rng, rows = random.Random(0), []
    for name in ("train", "val", "test"):
        for line in (source / f"{name}.jsonl").read_text().splitlines():
            paper = json.loads(line)
            sentences = paper["sentences"]["abstract"] + paper["sentences"]["introduction"]
            for role in ("challenge", "approach", "outcome"):
                context = " ".join(sentences[:rng.randint(1, 12)])
                rows.append({"id": f"{paper['id']}-{role}", "prompt": f"{context}\nWhat is the {role} of this paper?",
                             "completion": " " + paper["summary"][role]})
    return rows


def build_model(folder: Path, rows: list[dict], device: str) -> Path:
    """A GPT-2 with a byte-level BPE tokenizer trained on the rows' text (random weights)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["prompt"] + r["completion"] for r in rows],
                            trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = tok.token_to_id("<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   model_max_length=1024)
    shape = dict(n_embd=768, n_layer=12, n_head=12) if device == "cuda" else dict(n_embd=384, n_layer=4, n_head=6)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=1024, bos_token_id=eos, eos_token_id=eos,
                        **shape)
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def token_count(model: Path, rows: list[dict], max_length: int) -> int:
    from transformers import AutoTokenizer

    from ftune.tasks.lm.encoding import encode_completion

    tokenizer = AutoTokenizer.from_pretrained(model)
    return sum(len(encode_completion(tokenizer, r["prompt"], r["completion"], max_length)[0]) for r in rows)


# --------------------------------------------------------------------------------------------------
# The variants, each in a fresh process


def run_ftune(args, extra: list[str]) -> dict:
    from ftune.cli import main

    out = Path(args.out)
    command = ["lm", "--model", args.model_path, "--data", args.data_file, "--output-dir", str(out), "--epochs", "1",
               "--batch-size", str(args.batch_size), "--lr", "3e-4", "--max-length", str(args.max_length),
               "--seed", "42", "--logging-steps", "1000", *extra]
    try:
        main(command)
    except SystemExit as exc:
        if exc.code:
            raise
    train = json.loads((out / "train_results.json").read_text())
    return {"train_s": train["train_runtime"], "train_loss": train["train_loss"]}


def run_plain(args, lora: bool) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ftune.tasks.lm.encoding import encode_completion

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    tokenizer.pad_token = tokenizer.eos_token
    rows = load_dataset("json", data_files=str(Path(args.data_file) / "train.jsonl"))["train"]

    def encode(batch):
        pairs = [encode_completion(tokenizer, p, c, args.max_length) for p, c in zip(batch["prompt"],
                                                                                     batch["completion"])]
        return {"input_ids": [i for i, _ in pairs], "labels": [label for _, label in pairs]}

    features = rows.map(encode, batched=True, remove_columns=rows.column_names)
    model = AutoModelForCausalLM.from_pretrained(args.model_path)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["c_attn"],
                                                 fan_in_fan_out=True))
    bf16 = args.device == "cuda"
    training = TrainingArguments(output_dir=args.out, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                                 learning_rate=3e-4, seed=42, report_to="none", save_strategy="no", logging_steps=1000,
                                 use_cpu=args.device != "cuda", bf16=bf16, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=features, processing_class=tokenizer,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
    result = trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"train_s": result.metrics["train_runtime"], "train_loss": result.metrics["train_loss"]}


VARIANTS = {
    "Trainer, padded": lambda a: run_plain(a, lora=False),
    "ftune lm --no-packing": lambda a: run_ftune(a, ["--no-packing"]),
    "ftune lm": lambda a: run_ftune(a, []),
}
LORA_VARIANTS = {
    "transformers + peft": lambda a: run_plain(a, lora=True),
    "ftune lm --lora": lambda a: run_ftune(a, ["--lora", "--lora-targets", "c_attn"]),
}


def measure(name: str, args, data: Path, model: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--run", name, "--data-file", str(data), "--model-path", str(model),
               "--out", str(out), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"error: {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def packed_loss_check(model_path: Path, rows: list[dict], args) -> float:
    """The largest relative difference between packed and padded loss over the first batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    from ftune.tasks.lm.encoding import encode_completion
    from ftune.tasks.lm.packing import packing_collator

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    padded_collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    worst = 0.0
    for start in range(0, 4 * args.batch_size, args.batch_size):
        batch = []
        for row in rows[start:start + args.batch_size]:
            ids, labels = encode_completion(tokenizer, row["prompt"], row["completion"], args.max_length)
            batch.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
        with torch.no_grad():
            packed = model(**packing_collator(model, tokenizer)([dict(f) for f in batch])).loss.item()
            padded = model(**padded_collator([dict(f) for f in batch])).loss.item()
        worst = max(worst, abs(packed - padded) / abs(padded))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=240, help="training rows (all 750 on a GPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.run:
        variants = {**VARIANTS, **LORA_VARIANTS}
        print("RESULT " + json.dumps(variants[args.run](args)), flush=True)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: --device cuda, but no CUDA GPU is visible")
    rows = aclsum_rows()
    random.Random(1).shuffle(rows)
    held_out, rows = rows[:16], rows[16:]  # ftune's evaluation rows; every variant trains on the same rows
    rows = rows[:args.rows] if args.device == "cpu" else rows
    with tempfile.TemporaryDirectory(prefix="ftune-lm-bench-") as scratch:
        scratch = Path(scratch)
        data = scratch / "sft"
        data.mkdir()
        (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
        model = build_model(scratch / "model", rows, args.device)
        tokens = token_count(model, rows, args.max_length)
        names = list(VARIANTS) + (list(LORA_VARIANTS) if args.device == "cuda" else [])
        results: dict[str, list[dict]] = {name: [] for name in names}
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                results[name].append(measure(name, args, data, model, scratch / f"out-{len(results[name])}-{shift}"
                                             f"-{name.split()[-1]}"))
                print(f"round {round_number + 1}: {name}: {results[name][-1]}", file=sys.stderr, flush=True)
        worst = packed_loss_check(model, rows, args)
        parameters = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
            model).parameters())

    train_tokens = tokens
    print(f"causal-LM SFT on {len(rows)} aclsum prompt/completion rows ({tokens:,} tokens), GPT-2 shape "
          f"({parameters / 1e6:.0f}M parameters), batch {args.batch_size}, max length {args.max_length}, "
          f"{args.device}; median of {args.rounds} interleaved rounds")
    header = f"{'variant':<24}{'train s':>9}{'(spread)':>13}{'tokens/s':>10}{'vs padded':>11}{'train loss':>12}"
    print(header + (f"{'MFU':>8}" if args.device == "cuda" else ""))
    base = statistics.median(r["train_s"] for r in results["Trainer, padded"])
    for name in names:
        seconds = [r["train_s"] for r in results[name]]
        median = statistics.median(seconds)
        rate = train_tokens / median
        line = (f"{name:<24}{median:>9.1f}{f'{min(seconds):.1f}-{max(seconds):.1f}':>13}{rate:>10.0f}"
                f"{base / median:>10.2f}x{statistics.median(r['train_loss'] for r in results[name]):>12.4f}")
        if args.device == "cuda":
            line += f"{6 * parameters * rate / (args.peak_tflops * 1e12):>8.1%}"
        print(line)
    print(f"packed vs padded loss on the same examples: largest relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
