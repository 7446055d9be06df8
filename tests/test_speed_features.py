"""What ftune does for speed must not change results: packed SFT batches give the padded batches' loss with
less padding, length-sorted evaluation returns every row to its place, and tokenised features are cached."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import invoke, read_json


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the a cat dog bird fish house tree river city paper model data story".split()
    return [{"prompt": f"say {rng.choice(words)}:", "completion": " " + " ".join(rng.choice(words)
                                                                             for _ in range(rng.randint(1, 40)))}
            for _ in range(n)]


def test_packed_batches_have_less_padding_and_the_padded_loss(tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    from ftune.tasks.lm.encoding import encode_completion
    from ftune.tasks.lm.packing import keeps_examples_apart, packing_collator

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    assert keeps_examples_apart(model)
    features = []
    for row in sft_rows(16):
        ids, labels = encode_completion(tokenizer, row["prompt"], row["completion"], 128)
        features.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    packed = packing_collator(model, tokenizer)([dict(f) for f in features])
    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)([dict(f) for f in features])
    real = sum(len(f["input_ids"]) for f in features)
    assert packed["input_ids"].shape[0] < len(features)  # several examples per row
    assert packed["input_ids"].shape[1] == max(len(f["input_ids"]) for f in features)
    assert "attention_mask" not in packed and packed["position_ids"][0, 0] == 0
    assert packed["input_ids"].numel() - real < padded["input_ids"].numel() - real  # less padding than padded
    assert (packed["labels"] != -100).sum() == (padded["labels"] != -100).sum()  # the same tokens are learned
    with torch.no_grad():
        packed_loss = model(**packed).loss.item()
        padded_loss = model(**padded).loss.item()
    assert packed_loss == pytest.approx(padded_loss, rel=1e-4)


@pytest.mark.numerics
def test_packing_trains_and_can_be_turned_off(tiny_gpt2, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_rows(60)))
    common = ["lm", "--model", tiny_gpt2, "--data", data, "--max-steps", "3", "--batch-size", "8", "--precision",
              "fp32"]
    packed = invoke(*common, "--output-dir", tmp_path / "packed")
    assert packed.exit_code == 0, packed
    assert "packing: each training batch is packed into rows" in packed.stdout
    padded = invoke(*common, "--output-dir", tmp_path / "padded", "--no-packing")
    assert padded.exit_code == 0, padded
    assert "packed into rows" not in padded.stdout
    # The same examples in the same batches: the first logged loss is the same (dropout aside it is one step).
    first = [read_json(tmp_path / name / "trainer_state.json")["log_history"][0]["loss"]
             for name in ("packed", "padded")]
    assert first[0] == pytest.approx(first[1], rel=0.05)


def test_length_sorted_scoring_restores_the_rows_order():
    import datasets

    from ftune.tasks.base import length_order, restore_order

    lengths = [3, 9, 1, 9, 4, 7]
    inputs = datasets.Dataset.from_dict({"input_ids": [[0] * n for n in lengths]})
    order = length_order(inputs)
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True) and order[:2] == [1, 3]  # stable
    predicted_in_order = np.array([[lengths[i], i] for i in order])       # what a model would return, row-wise
    restored = restore_order((predicted_in_order, predicted_in_order * 10), order)
    assert restored[0][:, 1].tolist() == list(range(len(lengths)))
    assert restored[1][:, 0].tolist() == [10 * n for n in lengths]


def test_tokenised_features_are_read_back_from_the_cache(tiny_bert, tmp_path):
    import datasets

    from ftune.config import resolve_config
    from ftune.tasks import get_task

    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps({"text": f"good dog {i}", "label": i % 2}) + "\n" for i in range(50)))
    rows = datasets.load_dataset("json", data_files=str(rows_file), cache_dir=str(tmp_path / "cache"))["train"]
    task = get_task("classify")
    config = resolve_config(task.options_class, layers=[("t", {"data": "x", "model": str(tiny_bert)})])
    tokenizer = task.load_tokenizer(config)
    state = task.state_class(columns={"text": "text", "text_pair": None, "label": "label"}, labels=["0", "1"])
    first = task.features(config, tokenizer, rows, state, purpose="train")
    again = task.features(config.replace(output_dir="elsewhere"), tokenizer, rows, state, purpose="train")
    assert first.cache_files and first.cache_files == again.cache_files  # the same cache file: not tokenised twice
    other = task.features(config.replace(max_length=16), tokenizer, rows, state, purpose="train")
    assert other.cache_files != first.cache_files  # another option, other features


def test_every_task_names_a_shipped_metric_module():
    """The module each task scores with is loaded before training (a broken one fails before the first step, and
    the import of evaluate is not paid inside the first evaluation); each named module must ship with ftune."""
    from ftune.metrics import METRICS_DIR
    from ftune.tasks import all_tasks
    from ftune.tasks.classify.problems import PROBLEMS

    named = {task.name: task.metric_module for task in all_tasks()}
    assert named["lm"] is None  # the causal LM computes its loss and perplexity itself
    modules = {m for m in named.values() if m} | {problem.metric_module for problem in PROBLEMS.values()}
    assert {"classification", "multilabel", "regression", "seqeval_ner", "squad", "rouge", "translation"} <= modules
    for module in modules:
        assert (METRICS_DIR / f"{module}.py").is_file(), module


def test_rows_taken_from_a_chunked_table_are_the_rows_asked_for(tmp_path):
    """take_rows copies rows part by part from the slice each part spans (never the whole table at once): the
    result equals Arrow's own take, for sorted, shuffled and repeated positions across many chunks."""
    import pyarrow as pa

    from ftune.data import load_source, take_rows
    from ftune.data.tables import _write_rows

    n = 1000
    whole = pa.table({"text": [f"row {i}" for i in range(n)], "label": [i % 3 for i in range(n)]})
    chunked = pa.concat_tables([whole.slice(i, 37) for i in range(0, n, 37)])
    assert chunked.column("text").num_chunks > 20
    rng = np.random.default_rng(0)
    for indices in (np.sort(rng.choice(n, 300, replace=False)), rng.permutation(n)[:500], np.array([5, 5, 999, 0])):
        path = tmp_path / f"rows-{len(indices)}.arrow"
        _write_rows(chunked, indices, path, chunk=64)
        with pa.memory_map(str(path)) as source:
            written = pa.ipc.open_stream(source).read_all()
        assert written.to_pylist() == whole.take(pa.array(indices)).to_pylist()

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}", "label": i % 3}) + "\n" for i in range(n)))
    rows = load_source(str(data))["train"]
    picked = np.sort(rng.choice(n, 200, replace=False))
    taken = take_rows(rows, picked)
    assert taken.to_list() == rows.select(picked).to_list()
    assert take_rows(rows, range(10, 20)).to_list() == rows.select(range(10, 20)).to_list()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_first_token_last_layer_gives_the_whole_layers_logits_loss_and_gradients(tiny_bert, attention):
    import torch
    from transformers import AutoModelForSequenceClassification

    from ftune.cpu.first_token import first_token_last_layer, restore_last_layer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
    model.set_attn_implementation(attention)
    model.eval()  # no dropout: the two forms must agree value for value
    input_ids = torch.randint(5, 100, (4, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padded rows: their keys are masked out of the first token's attention too
    attention_mask[3, 3:] = 0
    labels = torch.tensor([0, 2, 1, 2])

    def run():
        model.zero_grad()
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        out.loss.backward()
        return out.logits.detach(), out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                        if p.grad is not None}

    logits, loss, grads = run()
    assert first_token_last_layer(model)
    assert not first_token_last_layer(model)  # once only
    first_logits, first_loss, first_grads = run()
    torch.testing.assert_close(first_logits, logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first_loss, loss, rtol=1e-5, atol=1e-6)
    assert first_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(first_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    restore_last_layer(model)
    restored_logits, _, _ = run()
    assert torch.equal(restored_logits, logits)  # the layer's own forward again, bit for bit


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "camembert", "electra"])
def test_first_token_last_layer_serves_every_family_it_names(model_type):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ftune.cpu.first_token import first_token_last_layer

    extra = {"embedding_size": 16} if model_type == "electra" else {}
    config = AutoConfig.for_model(model_type, vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                  num_labels=3, **extra)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    input_ids = torch.randint(5, 100, (3, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert first_token_last_layer(model)
        first = model(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(first, logits, rtol=1e-5, atol=1e-6)


def test_first_token_last_layer_leaves_other_classifiers_alone(tiny_gpt2):
    from transformers import AutoModelForSequenceClassification

    from ftune.cpu.first_token import first_token_last_layer

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_gpt2), num_labels=2)
    assert not first_token_last_layer(model)  # GPT-2 reads the last token


FAULTS_OF_REPEATED_ALLOCATIONS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from ftune.cpu.memory import keep_freed_memory
    assert keep_freed_memory()
np.ones(16 << 20, dtype=np.float32)  # 64 MiB, allocated, touched and freed once before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(16 << 20, dtype=np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "confstr") or not __import__("os").confstr("CS_GNU_LIBC_VERSION"),
                    reason="the allocator settings are glibc's")
def test_freed_memory_is_reused_without_faulting_pages_in_again():
    import subprocess
    import sys

    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATIONS, mode], capture_output=True,
                              text=True, check=True)
        return int(done.stdout.strip())

    default, kept = faults("default"), faults("keep")
    # By default each 64 MiB block is a fresh mapping whose pages fault in again (16,384 pages, or 32 huge pages
    # where the kernel backs it with those); kept, the freed block is reused.
    assert default >= 20 * 32
    assert kept * 20 < default
