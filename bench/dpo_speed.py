"""DPO training speed and memory: `ftune dpo` against TRL's DPOTrainer used as TRL's documentation shows, on the
same model, pairs and settings, measured side by side.

    python bench/dpo_speed.py                    # CPU: a small GPT-2-shaped model, random weights, 1 epoch
    python bench/dpo_speed.py --lora             # both with a LoRA adapter (the reference: the adapter disabled)
    python bench/dpo_speed.py --rounds 5 --pairs 160
    python bench/dpo_speed.py --ftune-args=--no-cpu-speedups   # ftune without its CPU speed-ups (ftune.cpu)

Pairs: aclsum (PyPI, offline): for each paper and role, the prompt is 1-8 of the paper's abstract and introduction
sentences and a question about that role, chosen the paper's summary sentence of that role, rejected its summary
sentence of another role (plain text; only pairs whose longer side fits --max-length, so that neither trainer
cuts an answer). Model: GPT-2 architecture (n_embd 256, 4 layers, 4 heads, 5.5M parameters) with a byte-level BPE
tokenizer trained on that text here (no GPT-2 weights install offline).

Variants, each in a fresh process, same pairs, model, seed, batch size, lr, beta, --max-length, one epoch, fp32:
  trl.DPOTrainer   DPOConfig + DPOTrainer(model, args, processing_class, train_dataset, eval_dataset) as in TRL's
                   quick start; the reference: a copy of the model TRL makes itself (with --lora: the adapter
                   disabled); the held-out pairs scored at the end of the epoch (eval_strategy="epoch")
  ftune dpo        the same settings through the command line, which also scores the held-out pairs at the end of
                   the epoch (16 pairs of other papers, batches of 2 x --batch-size, as ftune's default)
pairs/s: training pairs over the Trainer's train_runtime (in both, training and the one held-out scoring).
train CPU s: the CPU time (all threads) of the process while Trainer.train runs (the same wrapper in both), and
pairs/CPU s: the training pairs over it — on a machine shared with other work, the figure to compare.
end-to-end s: the whole process (imports, loading, tokenising, training; ftune's also its run folder and pictures).
CPU s: the whole process's user + system CPU time (less sensitive than wall-clock time to other work on a shared
machine). peak RSS: the process's largest resident set (getrusage). Rounds are interleaved; medians and spread;
ratios are ftune's over TRL's. Results also go to bench/results/dpo_speed/ (full.json/.txt, lora.json/.txt).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("challenge", "approach", "outcome")
BASELINE = "trl.DPOTrainer"


def aclsum_pairs() -> list[dict]:
    """One plain-text pair per aclsum paper and role, prompts of varied length."""
    spec = importlib.util.find_spec("aclsum")
    if spec is None:
        sys.exit("error: pip install --no-deps aclsum")
    source = Path(next(iter(spec.submodule_search_locations))) / "dataset"
    rng, pairs = random.Random(0), []
    for name in ("train", "val", "test"):
        for line in (source / f"{name}.jsonl").read_text().splitlines():
            paper = json.loads(line)
            sentences = paper["sentences"]["abstract"] + paper["sentences"]["introduction"]
            for role in ROLES:
                wrong = rng.choice([other for other in ROLES if other != role])
                pairs.append({"id": f"{paper['id']}-{role}",
                              "prompt": " ".join(sentences[:rng.randint(1, 8)]) + f"\nThe {role} of this paper:",
                              "chosen": " " + paper["summary"][role], "rejected": " " + paper["summary"][wrong]})
    return pairs


def build_model(folder: Path, pairs: list[dict]) -> Path:
    """A small GPT-2 with a byte-level BPE tokenizer trained on the pairs' text (random weights)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, set_seed

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([p["prompt"] + p["chosen"] + p["rejected"] for p in pairs],
                            trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = tok.token_to_id("<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", model_max_length=1024)
    set_seed(0)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=1024, n_embd=256, n_layer=4, n_head=4,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# The variants, each in a fresh process


TRAIN_CPU_S: list[float] = []


def count_training_cpu() -> None:
    """Record the CPU time (all threads) of every Trainer.train call: both variants train through it (ftune's
    Trainer and TRL's DPOTrainer call transformers' own), so both are measured by the same wrapper."""
    import transformers

    train = transformers.Trainer.train

    def counted(self, *args, **kwargs):
        start = time.process_time()
        try:
            return train(self, *args, **kwargs)
        finally:
            TRAIN_CPU_S.append(time.process_time() - start)

    transformers.Trainer.train = counted


def process_figures() -> dict:
    """This process's peak resident set, its CPU time (user + system, imports included) and its training's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,  # Linux: KiB
            "train_cpu_s": sum(TRAIN_CPU_S)}


def run_ftune(args) -> dict:
    from ftune.cli import main

    out = Path(args.out)
    command = ["dpo", "--model", args.model_path, "--data", args.data_file, "--output-dir", str(out), "--epochs", "1",
               "--batch-size", str(args.batch_size), "--lr", "5e-5", "--beta", "0.1", "--max-length",
               str(args.max_length), "--seed", "42", "--precision", "fp32", "--logging-steps", "1000"]
    if args.lora:
        command += ["--lora", "--lora-targets", "c_attn"]
    command += args.ftune_args.split()
    try:
        main(command)
    except SystemExit as exc:
        if exc.code:
            raise
    train = json.loads((out / "train_results.json").read_text())
    return {"train_s": train["train_runtime"], "train_loss": train["train_loss"]}


def run_trl(args) -> dict:
    """TRL's quick start: a model, its tokenizer, the pairs as a dataset, DPOConfig, DPOTrainer, train()."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(args.model_path)
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    data = {split: str(Path(args.data_file) / f"{split}.jsonl") for split in ("train", "validation")}
    dataset = load_dataset("json", data_files=data)
    # ftune scores its held-out pairs at the end of the epoch; so does this run, on the same pairs and batch size.
    training_args = DPOConfig(output_dir=args.out, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                              per_device_eval_batch_size=2 * args.batch_size, eval_strategy="epoch",
                              learning_rate=5e-5, beta=0.1, max_length=args.max_length, seed=42, use_cpu=True,
                              report_to="none", save_strategy="no", logging_steps=1000, disable_tqdm=True)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.1,
                                 target_modules=["c_attn"], fan_in_fan_out=True)
    trainer = DPOTrainer(model=model, args=training_args, processing_class=tokenizer, train_dataset=dataset["train"],
                         eval_dataset=dataset["validation"], peft_config=peft_config)
    result = trainer.train()
    return {"train_s": result.metrics["train_runtime"], "train_loss": result.metrics["train_loss"]}


VARIANTS = {BASELINE: run_trl, "ftune dpo": run_ftune}


def measure(name: str, args, data: Path, model: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--run", name, "--data-file", str(data), "--model-path", str(model),
               "--out", str(out), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    if args.lora:
        command.append("--lora")
    command.append(f"--ftune-args={args.ftune_args}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"error: {name} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "end_to_end_s": seconds}


def median_and_spread(values: list[float], form: str) -> tuple[float, str]:
    return statistics.median(values), f"{min(values):{form}}-{max(values):{form}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=96, help="training pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter in both (c_attn, r 8)")
    parser.add_argument("--ftune-args", default="",
                        help="more options for ftune dpo, e.g. --ftune-args=--no-cpu-speedups")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "dpo_speed")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.run:
        count_training_cpu()
        result = VARIANTS[args.run](args)
        print("RESULT " + json.dumps({**result, **process_figures()}), flush=True)
        return

    pairs = aclsum_pairs()
    random.Random(1).shuffle(pairs)
    with tempfile.TemporaryDirectory(prefix="ftune-dpo-bench-") as scratch:
        scratch = Path(scratch)
        model = build_model(scratch / "model", pairs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)

        def tokens(pair: dict, side: str) -> int:
            return len(tokenizer(pair["prompt"] + pair[side])["input_ids"]) + 1  # + the EOS ending the answer

        # Only pairs that fit --max-length whole: neither trainer cuts an answer, so both score the same tokens.
        pairs = [p for p in pairs if max(tokens(p, "chosen"), tokens(p, "rejected")) <= args.max_length]
        rows = pairs[:args.pairs]
        papers = {p["id"].rsplit("-", 1)[0] for p in rows}
        held_out = [p for p in pairs[args.pairs:] if p["id"].rsplit("-", 1)[0] not in papers][:16]
        data = scratch / "pairs"
        data.mkdir()
        (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
        sequence_tokens = [tokens(r, side) for r in rows for side in ("chosen", "rejected")]
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
        names = list(VARIANTS)
        results: dict[str, list[dict]] = {name: [] for name in names}
        for round_number in range(args.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            for name in order:
                out = scratch / f"out-{round_number}-{name.split()[0]}"
                results[name].append(measure(name, args, data, model, out))
                print(f"round {round_number + 1}: {name}: {results[name][-1]}", file=sys.stderr, flush=True)

    summary = {}
    for name in names:
        train_s, train_spread = median_and_spread([r["train_s"] for r in results[name]], ".1f")
        e2e_s, e2e_spread = median_and_spread([r["end_to_end_s"] for r in results[name]], ".0f")
        cpu_s, cpu_spread = median_and_spread([r["cpu_s"] for r in results[name]], ".0f")
        train_cpu_s, train_cpu_spread = median_and_spread([r["train_cpu_s"] for r in results[name]], ".1f")
        rss, rss_spread = median_and_spread([r["peak_rss_mib"] for r in results[name]], ".0f")
        summary[name] = {"train_s": train_s, "train_spread": train_spread, "pairs_per_s": len(rows) / train_s,
                         "end_to_end_s": e2e_s, "end_to_end_spread": e2e_spread, "cpu_s": cpu_s,
                         "cpu_spread": cpu_spread, "train_cpu_s": train_cpu_s, "train_cpu_spread": train_cpu_spread,
                         "pairs_per_cpu_s": len(rows) / train_cpu_s, "peak_rss_mib": rss,
                         "peak_rss_spread": rss_spread,
                         "train_loss": statistics.median(r["train_loss"] for r in results[name])}
    base = summary[BASELINE]
    lines = [f"DPO, {len(rows)} aclsum pairs ({min(sequence_tokens)}-{max(sequence_tokens)} tokens a sequence, "
             f"{sum(sequence_tokens):,} in all), "
             f"GPT-2 shape ({parameters / 1e6:.1f}M parameters), {'LoRA' if args.lora else 'full fine-tuning'}, "
             f"batch {args.batch_size} pairs, max length {args.max_length}, fp32, CPU ({os.cpu_count()} cores, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
             f"median of {args.rounds} interleaved rounds",
             f"{'variant':<16}{'train s':>9}{'(spread)':>12}{'pairs/s':>9}{'vs TRL':>8}{'train CPU s':>13}"
             f"{'(spread)':>12}{'pairs/CPU s':>13}{'vs TRL':>8}{'end-to-end s':>14}{'(spread)':>10}{'CPU s':>7}"
             f"{'(spread)':>10}{'peak RSS MiB':>14}{'(spread)':>12}{'vs TRL':>8}{'train loss':>12}"]
    for name in names:
        s = summary[name]
        lines.append(f"{name:<16}{s['train_s']:>9.1f}{s['train_spread']:>12}{s['pairs_per_s']:>9.2f}"
                     f"{s['pairs_per_s'] / base['pairs_per_s']:>7.2f}x{s['train_cpu_s']:>13.1f}"
                     f"{s['train_cpu_spread']:>12}{s['pairs_per_cpu_s']:>13.2f}"
                     f"{s['pairs_per_cpu_s'] / base['pairs_per_cpu_s']:>7.2f}x{s['end_to_end_s']:>14.0f}"
                     f"{s['end_to_end_spread']:>10}{s['cpu_s']:>7.0f}{s['cpu_spread']:>10}"
                     f"{s['peak_rss_mib']:>14.0f}{s['peak_rss_spread']:>12}"
                     f"{s['peak_rss_mib'] / base['peak_rss_mib']:>7.2f}x{s['train_loss']:>12.4f}")
    table = "\n".join(lines) + "\n"
    print(table, end="")
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "lora" if args.lora else "full"
    (args.results / f"{stem}.json").write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()
                                                                          if k in ("rounds", "pairs", "batch_size",
                                                                                   "max_length", "lora")},
                                                            "rounds": results, "summary": summary}, indent=2) + "\n")
    (args.results / f"{stem}.txt").write_text(table)


if __name__ == "__main__":
    main()
