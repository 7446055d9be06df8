"""`ftune lm` and `ftune generate` end to end on a tiny GPT-2 (and a tiny GPT-2 written as GGUF)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest

from tests import tiny_models
from tests.conftest import read_json, read_jsonl

FAST = ("--max-steps", "30", "--batch-size", "8", "--lr", "3e-3", "--logging-steps", "50",
        "--precision", "fp32")  # fp32 on every CPU: the tests assert what training learned


# --------------------------------------------------------------------------------------------------
# Data and models


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lm-data")
    rng = random.Random(0)
    words = tiny_models.WORDS
    (folder / "text.txt").write_text("\n".join(tiny_models.corpus(240, seed=1)) + "\n")
    with (folder / "pairs.jsonl").open("w") as out:
        for i in range(160):
            w = rng.choice(words)
            out.write(json.dumps({"id": f"p{i}", "prompt": f"repeat {w}:", "completion": f" {w} {w} {w}."}) + "\n")
    with (folder / "chat.jsonl").open("w") as out:
        for _ in range(160):
            w = rng.choice(words)
            out.write(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                               {"role": "assistant", "content": f"{w} {w}."}]}) + "\n")
    (folder / "blank.txt").write_text("\n   \n\n \n")
    return {p.stem: p for p in folder.iterdir()}


def write_gpt2_gguf(model_dir: Path, target: Path) -> Path:
    """A GPT-2 checkpoint as an f32 GGUF file, with its byte-level BPE vocabulary and merges."""
    import numpy as np
    import torch
    from gguf import GGUFWriter
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir)
    cfg = model.config
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    eos = vocab["vocab"]["<|endoftext|>"]
    writer = GGUFWriter(str(target), "gpt2")
    writer.add_context_length(cfg.n_positions)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(4 * cfg.n_embd)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])  # 3: control token
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]])
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    names = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
             "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
             "lm_head.weight": "output.weight"}
    blocks = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
              "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for hf, gg in blocks.items():
            for kind in ("weight", "bias"):
                names[f"transformer.h.{i}.{hf}.{kind}"] = f"blk.{i}.{gg}.{kind}"
    state = model.state_dict()
    for hf, gg in names.items():
        tensor = state[hf].to(torch.float32).numpy()
        if hf.endswith(".weight") and any(k in hf for k in ("c_attn", "c_proj", "c_fc")):
            tensor = tensor.T  # GPT-2's Conv1D stores (in, out); GGUF stores linear weights as (out, in)
        writer.add_tensor(gg, np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    pytest.importorskip("gguf", reason="writing a GGUF file needs the gguf package")
    folder = tmp_path_factory.mktemp("gguf")
    # transformers reads a GPT-2 GGUF's context into n_ctx and builds 1024 position embeddings: match them.
    hf = tiny_models.build_gpt2(folder / "hf", n_positions=1024)
    return write_gpt2_gguf(hf, folder / "tiny-gpt2.f32.gguf")


def untrained_metrics(run_dir: Path) -> dict:
    """The run's base model scored on the run's own held-out split, the way `ftune eval` scores."""
    from ftune.data import reload_held_out_split
    from ftune.rundir import open_run
    from ftune.trainers import inference_trainer

    run = open_run(run_dir)
    task, config, state = run.task, run.config, run.state
    rows, ids = reload_held_out_split(run.split, lambda data, data_config: task.load_source(config, data,
                                                                                            data_config))
    tokenizer = task.load_tokenizer(config)
    model = task.load_model(config, tokenizer, state)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = inference_trainer(task, config, state, model, tokenizer, precision="fp32", batch_size=None,
                                    scratch=scratch)
        return task.evaluate(config, trainer, tokenizer, state, rows, ids).metrics


def train(ftune, *args) -> None:
    result = ftune("lm", *args, *FAST)
    assert result.exit_code == 0, result


def assert_learned(run: Path) -> dict:
    metrics = read_json(run / "eval_results.json")
    assert metrics["eval_perplexity"] == pytest.approx(2.718281828 ** metrics["eval_loss"], rel=1e-6)
    before = untrained_metrics(run)
    assert metrics["eval_perplexity"] < 0.7 * before["eval_perplexity"], (metrics, before)
    return metrics


# --------------------------------------------------------------------------------------------------
# The three data shapes


@pytest.mark.numerics
def test_plain_text_is_packed_and_learned(ftune, tiny_gpt2, lm_data, tmp_path):
    run = tmp_path / "run"
    train(ftune, "--model", tiny_gpt2, "--data", lm_data["text"], "--block-size", "64", "--output-dir", run)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "ftune.yaml", "split.json",
                 "train_results.json", "eval_results.json", "eval_predictions.jsonl", "README.md",
                 "learning_curves.png"):
        assert (run / name).is_file(), name
    assert "](learning_curves.png)" in (run / "README.md").read_text()
    metrics = assert_learned(run)
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert len(predictions) == metrics["eval_blocks"]
    assert sum(p["tokens"] for p in predictions) == metrics["eval_tokens"]
    assert {"id", "prediction", "reference", "tokens"} <= set(predictions[0])

    # ftune eval scores the recorded split exactly as training did.
    result = ftune("eval", run, "--output-dir", tmp_path / "again")
    assert result.exit_code == 0, result
    again = read_json(tmp_path / "again" / "eval_results.json")
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], abs=1e-6)

    # Packing: every training block is full, so no token is padding.
    from datasets import Dataset
    from transformers import AutoTokenizer

    from ftune.tasks.lm import TASK

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    rows = Dataset.from_dict({"text": tiny_models.corpus(50, seed=3)})
    state = TASK.state_class(columns={"text": "text"}, mode="text", context=256, block_size=32, max_length=256)
    features = TASK.features(None, tokenizer, rows, state, purpose="train")
    assert len(features) > 1
    assert all(len(ids) == 32 for ids in features["input_ids"])
    assert all(set(mask) == {1} for mask in features["attention_mask"])
    assert features["input_ids"][0].count(tokenizer.eos_token_id) >= 1  # documents are separated by EOS


@pytest.mark.numerics
def test_completion_loss_masks_the_prompt(ftune, tiny_gpt2, lm_data, tmp_path):
    from transformers import AutoTokenizer

    from ftune.tasks.lm.encoding import IGNORE, encode_completion

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    ids, labels = encode_completion(tokenizer, "repeat cat:", " cat cat cat.", 64)
    n_prompt = len(tokenizer("repeat cat:")["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id  # the model learns to stop
    assert tokenizer.decode(labels[n_prompt:-1]) == " cat cat cat."

    run = tmp_path / "run"
    train(ftune, "--model", tiny_gpt2, "--data", lm_data["pairs"], "--output-dir", run)
    assert_learned(run)
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert predictions[0]["id"].startswith("p") and predictions[0]["reference"].startswith(" ")
    assert read_json(run / "split.json")["method"] == "fraction"


@pytest.mark.numerics
def test_chat_learns_assistant_turns_only(ftune, chat_gpt2, tiny_gpt2, lm_data, tmp_path):
    from transformers import AutoTokenizer

    from ftune.tasks.lm.encoding import IGNORE, encode_chat

    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    messages = [{"role": "user", "content": "say cat"}, {"role": "assistant", "content": "cat cat."}]
    ids, labels = encode_chat(tokenizer, messages, 128)
    scored = [t for t, label in zip(ids, labels) if label != IGNORE]
    assert tokenizer.decode(scored).startswith("cat cat.<|endoftext|>")
    assert "say" not in tokenizer.decode(scored)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)

    run = tmp_path / "run"
    train(ftune, "--model", chat_gpt2, "--data", lm_data["chat"], "--output-dir", run)
    assert_learned(run)
    result = ftune("generate", "--model", run, "--prompt", "say dog", "--chat", "--max-new-tokens", "8",
                   "--no-stream")
    assert result.exit_code == 0, result

    result = ftune("lm", "--model", tiny_gpt2, "--data", lm_data["chat"], "--output-dir", tmp_path / "x", *FAST)
    assert result.exit_code == 2 and "no chat template" in result.stderr, result


# --------------------------------------------------------------------------------------------------
# LoRA, merge, generate


def test_lora_merge_gives_equal_logits_and_generate_is_seeded(ftune, tiny_gpt2, lm_data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ftune.models import load_run_model
    from ftune.rundir import open_run

    run = tmp_path / "lora"
    result = ftune("lm", "--model", tiny_gpt2, "--data", lm_data["text"], "--block-size", "64", "--lora",
                   "--output-dir", run, "--max-steps", "10", "--batch-size", "8", "--lr", "1e-2")
    assert result.exit_code == 0, result
    assert (run / "adapter_config.json").is_file() and not (run / "model.safetensors").exists()
    assert ftune("eval", run).exit_code == 0

    merged = tmp_path / "merged"
    assert ftune("merge", run, "--output-dir", merged).exit_code == 0
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        adapted = load_run_model(open_run(run)).eval()(input_ids=ids).logits
        standalone = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()(input_ids=ids).logits
    assert torch.allclose(adapted, standalone, atol=1e-5)
    assert not torch.allclose(adapted, base, atol=1e-3)  # the adapter did change the model

    outputs = []
    for i in range(2):
        out = tmp_path / f"gen{i}.jsonl"
        result = ftune("generate", "--model", run, "--prompt", "the cat", "--prompt", "a dog", "--temperature", "1.0",
                       "--seed", "7", "--max-new-tokens", "12", "--output", out)
        assert result.exit_code == 0, result
        outputs.append(read_jsonl(out))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2
    assert [row["prompt"] for row in outputs[0]] == ["the cat", "a dog"]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the cat"}\n{"prompt": "a dog"}\n{"prompt": "big"}\n')
    result = ftune("generate", "--model", merged, "--prompts-file", prompts, "--num-beams", "2",
                   "--num-return-sequences", "2", "--max-new-tokens", "5")
    assert result.exit_code == 0, result
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 6

    result = ftune("generate", "--model", merged, "--prompt", "the cat", "--max-new-tokens", "5")  # streamed
    assert result.exit_code == 0 and result.stdout.strip(), result


def test_generation_stops_at_eos(tiny_gpt2, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftune.generation import GenerationOptions, generate_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # every position now predicts EOS: the final norm outputs EOS's own embedding
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(50 * model.transformer.wte.weight[eos])

    class Counter:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.reshape(-1).tolist())

        def end(self):
            pass

    counter = Counter()
    texts = generate_texts(model, tokenizer, ["the cat runs"], GenerationOptions(max_new_tokens=20), streamer=counter)
    assert texts == [[""]]
    assert counter.calls[1:] == [[eos]]  # after the prompt, one token: EOS, then generation stopped


def test_generate_from_seq2seq(ftune, tiny_t5):
    result = ftune("generate", "--model", tiny_t5, "--prompt", "summarize: the cat runs", "--max-new-tokens", "6",
                   "--no-stream")
    assert result.exit_code == 0, result


# --------------------------------------------------------------------------------------------------
# GGUF


def test_gguf_lora_run_reloads_from_the_file(ftune, tiny_gguf, lm_data, tmp_path):
    run = tmp_path / "gguf-lora"
    result = ftune("lm", "--model", tiny_gguf, "--data", lm_data["pairs"], "--lora", "--output-dir", run,
                   "--max-steps", "5", "--batch-size", "8", "--lr", "1e-2")
    assert result.exit_code == 0, result
    adapter = read_json(run / "adapter_config.json")
    assert adapter["base_model_name_or_path"] == str(tiny_gguf.resolve())
    assert ftune("eval", run, "--output-dir", tmp_path / "eval").exit_code == 0
    rescored = read_json(tmp_path / "eval" / "eval_results.json")["eval_loss"]
    assert rescored == pytest.approx(read_json(run / "eval_results.json")["eval_loss"], abs=1e-6)
    result = ftune("generate", "--model", run, "--prompt", "repeat cat:", "--max-new-tokens", "4", "--no-stream")
    assert result.exit_code == 0, result

    merged = tmp_path / "merged"
    assert ftune("merge", run, "--output-dir", merged).exit_code == 0
    config = read_json(merged / "config.json")
    assert "quantization_config" not in config and (merged / "model.safetensors").is_file()

    # A folder plus --gguf-file names the same model.
    result = ftune("lm", "--model", tiny_gguf.parent, "--gguf-file", tiny_gguf.name, "--data", lm_data["pairs"],
                   "--output-dir", tmp_path / "full", "--max-steps", "2", "--batch-size", "8")
    assert result.exit_code == 0, result
    assert "quantization_config" not in read_json(tmp_path / "full" / "config.json")


# --------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2


@pytest.mark.parametrize("args, message", [
    (("--data", "blank"), "has no rows"),
    (("--data", "text", "--block-size", "512"), "above the model's context of 256"),
    (("--data", "pairs", "--prompt-column", "prompt"), "--prompt-column needs --completion-column"),
    (("--data", "pairs", "--completion-column", "completion"), "--completion-column needs --prompt-column"),
    (("--data", "pairs", "--messages-column", "messages", "--text-column", "prompt"), "give one of them"),
    (("--data", "chat", "--messages-column", "messages"), "no chat template"),
    (("--data", "text", "--model", "broken.gguf"), "cannot read GGUF file"),
])
def test_bad_input(ftune, tiny_gpt2, lm_data, tmp_path, args, message):
    args = list(args)
    args[1] = lm_data[args[1]]
    if "--model" in args:
        bad = tmp_path / "broken.gguf"
        bad.write_bytes(b"not a gguf file")
        args[args.index("--model") + 1] = bad
    else:
        args += ["--model", tiny_gpt2]
    result = ftune("lm", *args, "--output-dir", tmp_path / "run", "--max-steps", "1")
    assert result.exit_code == 2, result
    last = result.stderr.strip().splitlines()[-1]  # (model loading may draw a progress bar before it)
    assert last.startswith("error:") and message in last, result
    assert not (tmp_path / "run" / "train_results.json").exists()
