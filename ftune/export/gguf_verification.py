"""GGUF export's verification: the written file read back and compared with the model it was made from, on
held-out tokens (a run's own held-out split as the run scored it, or VERIFY_TEXT for a model that is not a run).

- transformers' GGUF loader (always; it dequantises to float32): held-out perplexity and the largest logit
  difference against the source model's.
- llama.cpp itself, when llama-cpp-python is importable: its tokenizer against the source's on held-out text, its
  held-out perplexity, and greedy continuations of held-out prompts token by token against the source model's.

The bounds are `PERPLEXITY_BOUNDS`, `LOGIT_BOUND` and `GREEDY_TOKENS` with `GREEDY_TIE` (docs/export-gguf.md); a
figure out of bounds is RunFailed with every figure in its message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from ftune.errors import RunFailed

# Held-out perplexity of the export, relative to the source model's on the same tokens: how far each quantisation
# may move it. f16/q8_0 are the issue's bounds; the k-quants' catch a broken file, not a quality guarantee.
PERPLEXITY_BOUNDS = {"f16": 0.01, "bf16": 0.02, "q8_0": 0.05, "q6_k": 0.05, "q5_k_m": 0.10, "q4_k_m": 0.25}
# f16/bf16 read back through transformers: the largest logit difference, relative to the largest logit (at least 1).
# f16 rounds each weight by at most 2^-11 of itself and bf16 by 2^-8; through a few layers that moves logits by a
# small fraction of their size.
LOGIT_BOUND = {"f16": 0.01, "bf16": 0.05}
# llama.cpp's greedy continuation of the f16 file must equal the source model's for this many tokens (or up to EOS)
# on each held-out prompt. Two tokens whose logits are this close (relative to the largest, at least 1) are a tie
# that f16 rounding may break either way: a first difference there ends the comparison without failing it.
GREEDY_TOKENS = 32
GREEDY_TIE = 0.01
GREEDY_PROMPTS = 3
VERIFY_TOKENS = 4096     # held-out tokens scored at most (the first blocks of the held-out split)
VERIFY_TEXT = [          # held-out text for a model that is not a run
    "The river runs past the old mill and into the city, where it slows and widens before the sea.",
    "Question: what is the capital of France? Answer: Paris, which is also its largest city.",
    "To train a model, we split the data, fit the weights on one part and measure the loss on the other.",
]


def verify(model, tokenizer, file: Path, *, quantize: str, run) -> dict[str, Any]:
    """Read the file back through transformers' GGUF loader and, when llama-cpp-python is importable, through
    llama.cpp; compare with the source model on held-out tokens. RunFailed with the figures when out of bounds."""
    import importlib.util

    blocks, source_name = held_out_blocks(tokenizer, run)
    reference = score_blocks(model, blocks)
    figures: dict[str, Any] = {"held_out": source_name, "blocks": len(blocks), "tokens": reference["tokens"],
                               "perplexity_source": reference["perplexity"]}
    run_figure = _run_perplexity(run)
    if run_figure is not None:
        figures["eval_perplexity_run"] = run_figure
    problems = verify_transformers(file, model, blocks, reference, quantize, figures)
    if importlib.util.find_spec("llama_cpp") is not None:
        problems += verify_llamacpp(file, model, tokenizer, blocks, reference, quantize, figures)
    else:
        figures["llamacpp"] = "not run: llama-cpp-python is not installed (pip install 'ftune[llamacpp]')"
    if problems:
        raise RunFailed(f"the {quantize} GGUF export failed its verification: {'; '.join(problems)} "
                        f"(figures: {json.dumps(figures, default=str)})")
    return figures


def held_out_blocks(tokenizer, run, limit: int = VERIFY_TOKENS) -> tuple[list[tuple[list[int], list[int]]], str]:
    """(input ids, labels) of the run's held-out rows as the run scored them (or of VERIFY_TEXT for a model that is
    not a run), the first blocks up to `limit` tokens; and what they are, for export.json."""
    from ftune.tasks.lm.encoding import document_chunks

    features = None
    if run is not None and run.split:
        from ftune.data import reload_held_out_split

        rows, _ = reload_held_out_split(run.split, lambda s, c: run.task.load_source(run.config, s, c))
        features = run.task.features(run.config, tokenizer, rows, run.state, purpose="eval")
        described = f"the run's held-out split ({len(rows)} rows)"
        if not {"input_ids", "labels"} <= set(features.column_names):
            features = None  # a task whose rows are not scored as token blocks (answer pairs, say)
    if features is None:
        features = document_chunks(tokenizer, VERIFY_TEXT, 256)
        described = ("ftune's verification text (the source is not a run)" if run is None or not run.split else
                     f"ftune's verification text ({run.task.name} runs do not score token blocks)")
    blocks, total = [], 0
    for ids, labels in zip(features["input_ids"], features["labels"]):
        if blocks and total + len(ids) > limit:
            break
        blocks.append((list(ids), list(labels)))
        total += len(ids)
    return blocks, described


def _run_perplexity(run) -> Optional[float]:
    if run is None:
        return None
    from ftune.rundir import EVAL_RESULTS

    file = run.path / EVAL_RESULTS
    value = json.loads(file.read_text(encoding="utf-8")).get("eval_perplexity") if file.is_file() else None
    return float(value) if isinstance(value, (int, float)) else None


def score_blocks(model, blocks, *, logits_of=None) -> dict[str, Any]:
    """Perplexity over the blocks' labelled tokens, and each block's logits (for comparison); `logits_of(ids)`
    gives the logits another way (llama.cpp) instead of the transformers model."""
    import torch

    from ftune.tasks.lm.trainer import token_loss_sums

    loss_sum, count, logits_all = 0.0, 0, []
    for ids, labels in blocks:
        if logits_of is None:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        else:
            logits = torch.from_numpy(logits_of(ids)).float()
        sums = token_loss_sums(logits[None], torch.tensor([labels]))[0]
        loss_sum, count = loss_sum + float(sums[0]), count + int(sums[1])
        logits_all.append(logits)
    loss = loss_sum / max(count, 1)
    return {"perplexity": math.exp(loss) if loss < 700 else float("inf"), "tokens": count, "logits": logits_all}


def _logit_figures(reference, other) -> tuple[float, float]:
    """(largest |logit difference|, largest |logit| of the reference) over all blocks."""
    diff = max(float((a - b).abs().max()) for a, b in zip(reference["logits"], other["logits"]))
    scale = max(float(a.abs().max()) for a in reference["logits"])
    return diff, scale


def _perplexity_problem(where: str, value: float, reference: float, quantize: str) -> list[str]:
    bound = PERPLEXITY_BOUNDS[quantize]
    if not math.isfinite(value) or abs(value / reference - 1) > bound:
        return [f"{where} held-out perplexity {value:.4f} is not within {bound:.0%} of the source model's "
                f"{reference:.4f}"]
    return []


def verify_transformers(file: Path, model, blocks, reference, quantize: str, figures: dict) -> list[str]:
    """The file read back by transformers' GGUF loader (dequantised to float32): logits and perplexity."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name)
    if config.model_type == "gpt2":
        config.n_positions = config.n_ctx  # transformers reads GPT-2's context into n_ctx only (its table's gap)
    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, config=config,
                                                  dtype=torch.float32).eval()
    scored = score_blocks(loaded, blocks)
    diff, scale = _logit_figures(reference, scored)
    figures.update(perplexity_transformers=scored["perplexity"], logits_max_abs_diff_transformers=diff,
                   logits_max_abs_source=scale)
    problems = _perplexity_problem("transformers' reading of the file:", scored["perplexity"],
                                   reference["perplexity"], quantize)
    if quantize in LOGIT_BOUND and diff > LOGIT_BOUND[quantize] * max(1.0, scale):
        problems.append(f"logits read back by transformers differ by up to {diff:.4g}, above "
                        f"{LOGIT_BOUND[quantize]} x {max(1.0, scale):.4g}")
    return problems


def verify_llamacpp(file: Path, model, tokenizer, blocks, reference, quantize: str, figures: dict) -> list[str]:
    """llama.cpp runs the file: it tokenizes held-out text as the source tokenizer does, its held-out perplexity is
    within bounds, and (f16) its greedy continuations equal the source model's, ties aside."""
    from ftune.engines.llamacpp import LlamaCppModel

    context = max(len(ids) for ids, _ in blocks) + GREEDY_TOKENS + 8
    engine = LlamaCppModel(file, context=context)
    problems = []
    text = tokenizer.decode(blocks[0][0], skip_special_tokens=True)
    expected = tokenizer(text)["input_ids"]
    got = engine.tokenize(text)
    figures["llamacpp_tokenizer_equal"] = got == expected
    if got != expected:
        problems.append(f"llama.cpp tokenizes held-out text as {got[:12]}... where the source tokenizer gives "
                        f"{expected[:12]}...")
    scored = score_blocks(None, blocks, logits_of=engine.logits)
    diff, _ = _logit_figures(reference, scored)
    figures.update(perplexity_llamacpp=scored["perplexity"], logits_max_abs_diff_llamacpp=diff)
    problems += _perplexity_problem("llama.cpp's", scored["perplexity"], reference["perplexity"], quantize)
    greedy = [compare_greedy(model, engine, prompt_ids(ids, labels)) for ids, labels in blocks[:GREEDY_PROMPTS]]
    figures["greedy_llamacpp"] = greedy
    if quantize == "f16":
        for number, outcome in enumerate(greedy, 1):
            if outcome["verdict"] == "differs":
                problems.append(f"llama.cpp's greedy continuation of held-out prompt {number} differs from the "
                                f"source model's at token {outcome['equal_tokens'] + 1} (not a tie: logit gap "
                                f"{outcome['gap']:.4g})")
    return problems


def prompt_ids(ids: list[int], labels: list[int]) -> list[int]:
    """A held-out block's prompt: its tokens up to the first scored one (a completion's prompt, a chat up to the
    assistant), or, for a document, its first 16 tokens (at most half of it)."""
    first = next((i for i, label in enumerate(labels) if label != -100 and i > 0), len(ids))
    if first >= 4:
        return ids[:first]
    return ids[:max(2, min(16, len(ids) // 2))]


def compare_greedy(model, engine, prompt: list[int]) -> dict[str, Any]:
    """The source model's and llama.cpp's greedy continuations of `prompt` side by side, token by token, for
    GREEDY_TOKENS tokens or up to EOS. At the first difference, the source model's logits say whether the two
    tokens were a tie (within GREEDY_TIE of the largest logit): verdict "equal", "tie" or "differs"."""
    import torch

    eos = {t for t in (model.generation_config.eos_token_id, model.config.eos_token_id) if t is not None
           for t in (t if isinstance(t, list) else [t])}
    ours = engine.greedy(prompt, GREEDY_TOKENS, stop=eos)
    ids, cache = torch.tensor([prompt]), None
    with torch.no_grad():
        for step, token in enumerate(ours):
            out = model(input_ids=ids, cache=cache, use_cache=True)
            logits, cache = out.logits[0, -1].float(), out.cache
            best = int(logits.argmax())
            if best != token:
                gap = float(logits[best] - logits[token])
                verdict = "tie" if gap <= GREEDY_TIE * max(1.0, float(logits.abs().max())) else "differs"
                return {"equal_tokens": step, "verdict": verdict, "gap": gap}
            ids = torch.tensor([[best]])
    return {"equal_tokens": len(ours), "verdict": "equal", "gap": 0.0}
