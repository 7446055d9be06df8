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
- Verification: ftune.export.gguf_verification, after the files are written.
"""

from __future__ import annotations

import json
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

    from ftune.tasks import get_task

    if task_name is not None and get_task(task_name).model_class != "AutoModelForCausalLM":
        other = ("use --format onnx" if task_name in ("classify", "ner", "qa")
                 else "GGUF holds decoder-only language models, and this run's model is an encoder-decoder")
        raise UsageError(f"a {task_name} run has no GGUF export (GGUF is for causal-LM runs: ftune lm, ftune dpo); "
                         f"{other}")
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
    from ftune.export.gguf_verification import verify
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
    else:
        fallbacks = write_gguf(model, model_dir, target, quantize=quantize, name=name, defaults=defaults)
    modelfile = write_modelfile(out_dir, target.name, tokenizer, defaults, context=_context(model.config))
    console.info(f"verifying {target.name}")
    verification = verify(model, tokenizer, target, quantize=quantize, run=run)
    return {"files": [target.name, modelfile.name], "verification": verification,
            "tensor_types": tensor_types(target), "fallback_tensors": fallbacks}


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
