"""GGUF export: a causal LM as one `.gguf` file for llama.cpp and Ollama, with an Ollama `Modelfile` beside it.

The file is written with gguf-py's writer and tensor name maps (the `gguf` package, the `gguf` extra), not with
llama.cpp's `convert_hf_to_gguf.py`: that script is not in any installed package (only in llama.cpp's sources), and
it refuses byte-level BPE tokenizers whose pre-tokenizer it does not know by a hash of their output. Here the
pre-tokenizer is named from what the tokenizer's own `tokenizer.json` says it does (GPT-2's split, SmolLM's digits,
Qwen2's and Llama-3's regular expressions), so a run's tokenizer maps onto llama.cpp's exactly or is refused.

- Architectures: Llama (SmolLM2, Llama 2/3 with default or linear RoPE), Mistral (llama.cpp's llama architecture;
  its context is capped at the sliding window, past which llama.cpp would attend where the model does not), Qwen2
  and GPT-2. Q and K rows of the Llama family are permuted from transformers' rotate-half layout to the adjacent
  pairs llama.cpp's llama architecture rotates; GPT-2's Conv1D weights are transposed.
- Quantisations: f16 (default), bf16 and q8_0 are written here (q8_0 by gguf-py's reference quantiser); rows that do
  not divide into 32-value blocks stay f16, as llama.cpp's converter does. q4_k_m, q5_k_m and q6_k go through
  llama.cpp's own quantiser (`llama_model_quantize`, the `llamacpp` extra) from an f32 file made here; it gives
  tensors whose rows do not divide into 256-value k-blocks another type, and `export.json` lists them.
- Metadata: the tokenizer (tokens, types, merges or scores), special token ids and whether BOS/EOS are added, the
  chat template, and the generation defaults (`general.sampling.*`: greedy unless the model's generation config
  samples, as `ftune generate` decodes).
- Verification (`verify_*`): the file is read back through transformers' GGUF loader and its logits compared with
  the source model's on held-out text; when llama-cpp-python is importable, llama.cpp itself runs the file (its
  tokenizer against the source's, held-out perplexity, greedy continuations). The bounds are `PERPLEXITY_BOUNDS`,
  `LOGIT_BOUND` and `GREEDY_TOKENS` with `GREEDY_TIE` (docs/export-gguf.md); a figure out of bounds is RunFailed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ftune.errors import RunFailed, UsageError

QUANTIZATIONS = ("f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k")
DEFAULT_QUANTIZATION = "f16"
K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}      # llama.cpp's file types, named in llama_cpp
K_BLOCK = 256        # values per k-quant block: a row must divide into them
Q8_BLOCK = 32        # values per q8_0 block

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


@dataclass(frozen=True)
class Architecture:
    gguf_name: str          # llama.cpp's architecture
    pairs_rotated: bool     # llama.cpp rotates adjacent pairs: permute Q/K rows from transformers' halves
    conv1d: bool            # weights stored input-major (GPT-2's Conv1D): transpose


ARCHITECTURES = {"llama": Architecture("llama", True, False), "mistral": Architecture("llama", True, False),
                 "qwen2": Architecture("qwen2", False, False), "gpt2": Architecture("gpt2", False, True)}
SUPPORTED = "Llama (SmolLM2, Llama 2/3), Mistral, Qwen2 and GPT-2"
# Tensors a model keeps that are not weights (buffers llama.cpp recomputes).
SKIPPED = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def check(model_config, task_name: Optional[str], quantize: str) -> None:
    """One-line UsageError before anything is written: task, architecture, quantisation, extras."""
    import importlib.util

    if task_name is not None and task_name != "lm":
        other = ("use --format onnx" if task_name in ("classify", "ner", "qa")
                 else "GGUF holds decoder-only language models, and this run's model is an encoder-decoder")
        raise UsageError(f"a {task_name} run has no GGUF export (GGUF is for causal-LM runs of ftune lm); {other}")
    model_type = getattr(model_config, "model_type", "unknown")
    if model_type not in ARCHITECTURES:
        raise UsageError(f"GGUF export supports {SUPPORTED} models; this is a {model_type} model")
    rope = _rope_parameters(model_config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise UsageError(f"GGUF export supports default and linear RoPE; this model's RoPE is {rope['rope_type']}")
    if quantize not in QUANTIZATIONS:
        raise UsageError(f"--quantize {quantize} is not a GGUF quantisation; choose one of: {', '.join(QUANTIZATIONS)}")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("GGUF export needs the gguf package: pip install 'ftune[gguf]'")
    if quantize in K_QUANTS and importlib.util.find_spec("llama_cpp") is None:
        raise UsageError(f"--quantize {quantize} uses llama.cpp's own quantiser: pip install 'ftune[llamacpp]' (it "
                         "builds llama.cpp, which takes minutes), or choose f16, bf16 or q8_0")


def export(model_dir: Path, out_dir: Path, *, quantize: str, run) -> dict:
    """Write NAME-QUANT.gguf and a Modelfile into `out_dir`, verify them, return the files and figures."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftune import console
    from ftune.export.modelfile import write_modelfile

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    name = run.path.name if run is not None else _model_name(model_dir)
    target = out_dir / f"{_safe(name) or 'model'}-{quantize}.gguf"
    defaults = generation_defaults(model_dir)
    if quantize in K_QUANTS:
        staged = out_dir / f".{target.stem}.f32.gguf"
        try:
            write_gguf(model, model_dir, staged, quantize="f32", name=name, defaults=defaults)
            console.info(f"quantising to {quantize} with llama.cpp")
            llamacpp_quantize(staged, target, quantize)
        finally:
            staged.unlink(missing_ok=True)
        fallbacks = k_quant_fallbacks(target)
        extras: dict[str, Any] = {"tensor_types": tensor_types(target), "fallback_tensors": fallbacks}
    else:
        fallbacks = write_gguf(model, model_dir, target, quantize=quantize, name=name, defaults=defaults)
        extras = {"tensor_types": tensor_types(target), "fallback_tensors": fallbacks}
    modelfile = write_modelfile(out_dir, target.name, tokenizer, defaults, context=_context(model.config))
    console.info(f"verifying {target.name}")
    verification = verify(model, tokenizer, target, quantize=quantize, run=run)
    return {"files": [target.name, modelfile.name], "verification": verification, **extras}


# --------------------------------------------------------------------------------------------------
# Writing


def write_gguf(model, model_dir: Path, target: Path, *, quantize: str, name: str,
               defaults: dict[str, Any]) -> dict[str, str]:
    """The model, its tokenizer and generation defaults as one GGUF file; returns the tensors that could not take
    `quantize` and the type they got instead."""
    import gguf

    config = model.config
    arch = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(target), arch.gguf_name)
    writer.add_type("model")
    writer.add_name(name)
    _write_hyperparameters(writer, config, arch)
    _write_tokenizer(writer, model_dir, config.vocab_size)
    _write_sampling(writer, defaults)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantize]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    fallbacks = _write_tensors(writer, model, arch, quantize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return fallbacks


def _rope_parameters(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(rope, dict):
        return {}
    return rope.get("full_attention", rope)


def _context(config) -> int:
    if config.model_type == "gpt2":
        return config.n_positions
    context = config.max_position_embeddings
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
    return min(context, window) if isinstance(window, int) and window > 0 else context


def _write_hyperparameters(writer, config, arch: Architecture) -> None:
    import gguf

    writer.add_context_length(_context(config))
    writer.add_vocab_size(config.vocab_size)
    if config.model_type == "gpt2":
        writer.add_block_count(config.n_layer)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope_parameters(config)
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


# ---- the tokenizer ---------------------------------------------------------------------------------

GPT2_SPLIT = {"type": "ByteLevel", "use_regex": True}
# The split expressions of Qwen2's and Llama-3's tokenizer.json (they differ in how many digits make one piece).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for how a byte-level BPE tokenizer splits text before merging, read from its structure;
    UsageError for a split llama.cpp has no name for (its tokens would differ from the run's)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]

    def byte_level(step, regex: bool) -> bool:
        return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == regex

    if len(steps) == 1 and byte_level(steps[0], True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level(steps[1], True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and byte_level(steps[1], False):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        names = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}
        if pattern in names:
            return names[pattern]
    raise UsageError(f"the tokenizer splits text before its BPE merges in a way llama.cpp has no name for "
                     f"({' + '.join(map(str, kinds)) or 'no pre-tokenizer'}); GGUF export supports GPT-2, SmolLM, "
                     "Qwen2 and Llama-3 byte-level BPE tokenizers and SentencePiece-style ones")


def _write_tokenizer(writer, model_dir: Path, n_vocab: int) -> None:
    """Tokens, their types, merges (BPE) or scores (SentencePiece-style), special tokens and the chat template."""
    import gguf

    file = model_dir / "tokenizer.json"
    if not file.is_file():
        raise UsageError(f"{model_dir} has no tokenizer.json (a fast tokenizer); GGUF export writes the tokenizer "
                         "into the file and reads it from there")
    tokenizer_json = json.loads(file.read_text(encoding="utf-8"))
    model = tokenizer_json.get("model", {})
    if model.get("type") == "BPE" and not model.get("byte_fallback") and \
            (tokenizer_json.get("decoder") or {}).get("type") == "ByteLevel":
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json))
        tokens, types = _bpe_tokens(tokenizer_json, n_vocab)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        merges = True
    else:
        try:
            vocab = gguf.LlamaHfVocab(model_dir)
        except (FileNotFoundError, TypeError, ValueError) as exc:
            raise UsageError(f"the tokenizer in {model_dir} is neither byte-level BPE nor SentencePiece-style "
                             f"({exc}); GGUF export cannot write it") from None
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        for index in range(len(tokens), n_vocab):
            tokens.append(f"[PAD{index}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens[:n_vocab])
        writer.add_token_scores(scores[:n_vocab])
        writer.add_token_types(types[:n_vocab])
        merges = False
    special = gguf.SpecialVocab(model_dir, load_merges=merges, n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)


def _bpe_tokens(tokenizer_json: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    """Every id's token text (byte-level characters, as llama.cpp's BPE vocabulary holds them) and type; ids the
    tokenizer does not use (an embedding padded past the vocabulary) are unused placeholders."""
    import gguf

    by_id = {index: (text, gguf.TokenType.NORMAL) for text, index in tokenizer_json["model"]["vocab"].items()}
    for added in tokenizer_json.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    beyond = [index for index in by_id if index >= n_vocab]
    if beyond:
        raise UsageError(f"the tokenizer has token ids up to {max(beyond)} but the model's embedding has {n_vocab} "
                         "rows; resize the embedding to the tokenizer before exporting")
    tokens, types = [], []
    for index in range(n_vocab):
        text, kind = by_id.get(index, (f"[PAD{index}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(kind)
    return tokens, types


def generation_defaults(model_dir: Path) -> dict[str, Any]:
    """The decoding a user of the file gets by default: the model's generation config where it samples, else greedy
    (temperature 0, no repeat penalty), as `ftune generate` decodes."""
    file = model_dir / "generation_config.json"
    config = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    found: dict[str, Any] = {"temperature": 0.0, "repeat_penalty": float(config.get("repetition_penalty") or 1.0)}
    if config.get("do_sample"):
        found["temperature"] = float(config.get("temperature") or 1.0)
        for key in ("top_p", "top_k"):
            if config.get(key) is not None:
                found[key] = config[key]
    return found


def _write_sampling(writer, defaults: dict[str, Any]) -> None:
    writer.add_sampling_temp(defaults["temperature"])
    writer.add_sampling_penalty_repeat(defaults["repeat_penalty"])
    if "top_p" in defaults:
        writer.add_sampling_top_p(float(defaults["top_p"]))
    if "top_k" in defaults:
        writer.add_sampling_top_k(int(defaults["top_k"]))


# ---- the tensors -----------------------------------------------------------------------------------


def _write_tensors(writer, model, arch: Architecture, quantize: str) -> dict[str, str]:
    import gguf

    config = model.config
    blocks = config.n_layer if config.model_type == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], blocks)
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    fallbacks: dict[str, str] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith(SKIPPED) or (tied and hf_name == "lm_head.weight"):
            continue  # a tied output reads the token embedding, in llama.cpp as in transformers
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UsageError(f"the model has a tensor llama.cpp's {arch.gguf_name} architecture has no place for "
                             f"({hf_name}); GGUF export supports {SUPPORTED} models as transformers defines them")
        data = _layout(tensor.float().numpy(), hf_name, config, arch)
        qtype = _tensor_type(name, data, quantize)
        if quantize == "f16" and qtype == gguf.GGMLQuantizationType.F16 and not _fits_f16(data):
            raise RunFailed(f"tensor {hf_name} holds values beyond float16's range (65504); export with "
                            "--quantize bf16")
        if quantize == "q8_0" and data.ndim == 2 and qtype != gguf.GGMLQuantizationType.Q8_0 \
                and not name.endswith("_norm.weight") and "position_embd" not in name:
            fallbacks[name] = qtype.name.lower()
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data.astype("float32"))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype("float16"))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    return fallbacks


def _layout(data, hf_name: str, config, arch: Architecture):
    """A weight in llama.cpp's layout: GPT-2's Conv1D transposed; Llama-family Q/K rows (and biases) reordered so
    that each rotated pair of dimensions is adjacent (transformers rotates the two halves of each head)."""
    if arch.conv1d and data.ndim == 2 and hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
        return data.T.copy()
    if arch.pairs_rotated and hf_name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
        heads = config.num_attention_heads
        if ".k_proj." in hf_name:
            heads = getattr(config, "num_key_value_heads", None) or heads
        rows = data.shape[0]
        return (data.reshape(heads, 2, rows // heads // 2, *data.shape[1:]).swapaxes(1, 2)
                .reshape(data.shape).copy())
    return data


def _tensor_type(name: str, data, quantize: str):
    """The type a tensor is stored as: vectors, norms and GPT-2's position table in f32 (llama.cpp reads them so);
    other matrices in the quantisation, or f16 where their rows do not divide into q8_0 blocks."""
    import gguf

    types = gguf.GGMLQuantizationType
    if data.ndim <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd") or quantize == "f32":
        return types.F32
    if quantize == "q8_0":
        return types.Q8_0 if data.shape[-1] % Q8_BLOCK == 0 else types.F16
    return types.BF16 if quantize == "bf16" else types.F16


def _fits_f16(data) -> bool:
    import numpy as np

    return bool(np.all(np.abs(data) <= 65504))


def llamacpp_quantize(source: Path, target: Path, quantize: str) -> None:
    """llama.cpp's quantiser (as its `llama-quantize` tool runs it) from an f32 file to a k-quant file."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    from ftune.engines.llamacpp import quiet_stderr

    params.ftype = getattr(llama_cpp, K_QUANTS[quantize])
    with quiet_stderr():  # it logs every tensor to the C stderr
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0 or not target.is_file():
        raise RunFailed(f"llama.cpp's quantiser failed ({code}) making {quantize} from {source.name}")


def tensor_types(file: Path) -> dict[str, int]:
    """How many tensors of each type the file holds."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name.lower() for t in GGUFReader(str(file)).tensors).items()))


def k_quant_fallbacks(file: Path) -> dict[str, str]:
    """The matrices llama.cpp could not store in a k-quant because their rows do not divide into 256-value blocks,
    with the type it gave them instead."""
    from gguf import GGUFReader

    found = {}
    for tensor in GGUFReader(str(file)).tensors:
        kind = tensor.tensor_type.name.lower()
        if len(tensor.shape) == 2 and tensor.shape[0] % K_BLOCK != 0 and kind not in ("f32", "f16") \
                and not kind.endswith("_k"):
            found[tensor.name] = kind
    return found


def _model_name(model_dir: Path) -> str:
    """A model folder's name; "model" for the temporary folder a Hub model or .gguf file was materialised in."""
    import tempfile

    return "model" if model_dir.parent == Path(tempfile.gettempdir()) else model_dir.name


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")


# --------------------------------------------------------------------------------------------------
# Verification


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

    if run is not None and run.split:
        from ftune.data import reload_held_out_split

        rows, _ = reload_held_out_split(run.split, lambda s, c: run.task.load_source(run.config, s, c))
        features = run.task.features(run.config, tokenizer, rows, run.state, purpose="eval")
        described = f"the run's held-out split ({len(rows)} rows)"
    else:
        features = document_chunks(tokenizer, VERIFY_TEXT, 256)
        described = "ftune's verification text (the source is not a run)"
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
