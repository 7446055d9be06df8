"""`ftune summarize` end to end on a tiny T5 and a tiny BART: train, eval, predict, merge — full and LoRA."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from tests.conftest import held_out_rows, read_json, read_jsonl, task_recipes, train_run

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Few steps, short sequences: each run trains in seconds on 2 CPU cores.
FAST = ["--max-steps", "30", "--batch-size", "8", "--lr", "3e-3", "--max-length", "16", "--max-target-length", "8",
        "--val-fraction", "0.2", "--logging-steps", "10", "--precision", "fp32"]  # fp32 on any CPU
VOCAB = "cat dog bird fish house tree river city paper model data story movie actor paris london".split()


def summary_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable task: the summary names the first two words of the document, one sentence per line."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(VOCAB) for _ in range(rng.randint(6, 20))]
        rows.append({"id": f"d{i}", "document": " ".join(words),
                     "summary": f"the {words[0]}.\nthe {words[1]}."})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "docs.jsonl", summary_rows(60))


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory, tiny_t5, docs_file):
    return train_run(tmp_path_factory, "summarize", "t5", "--model", tiny_t5, "--data", docs_file, *FAST)


@pytest.fixture(scope="module")
def bart_lora_run(tmp_path_factory, tiny_bart, docs_file):
    # All linear layers: on a random-init base, q/v adapters alone learn too little to emit any text.
    return train_run(tmp_path_factory, "summarize", "bart-lora", "--model", tiny_bart, "--data", docs_file, "--lora",
                     *FAST, "--lora-targets", "q_proj,k_proj,v_proj,out_proj,fc1,fc2", "--lr", "1e-2")


def rouge_recomputed(predictions: list[dict]) -> dict[str, float]:
    """The SPEC's definition, straight from rouge-score: mean per-example F-measure x 100."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(p["reference"], p["prediction"]) for p in predictions]
    return {t: sum(100 * s[t].fmeasure for s in scores) / len(scores) for t in ROUGE_TYPES}


def test_t5_run_writes_the_run_directory(t5_run):
    names = {p.name for p in t5_run.path.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "ftune.yaml", "split.json",
                "train_results.json", "trainer_state.json", "eval_results.json", "eval_predictions.jsonl",
                "README.md", "learning_curves.png"}
    assert expected <= names
    assert not [n for n in names if n.startswith("checkpoint-") or n == ".ftune.lock"]
    metrics = read_json(t5_run.path / "eval_results.json")
    assert {f"eval_{t}" for t in ROUGE_TYPES} | {"eval_gen_len"} <= metrics.keys()
    assert all(0.0 <= metrics[f"eval_{t}"] <= 100.0 for t in ROUGE_TYPES)
    assert 0 < metrics["eval_gen_len"] <= 8  # at most --max-target-length new tokens
    assert 0.0 <= metrics["eval_rouge1"] <= 100.0, metrics  # a tiny random model may still emit nothing
    # The best checkpoint was chosen by ROUGE computed during training.
    state = read_json(t5_run.path / "trainer_state.json")
    assert any("eval_rougeL" in entry for entry in state["log_history"])
    assert "eval_rougeL" in (t5_run.path / "README.md").read_text()


def test_reported_rouge_equals_rouge_score_on_the_predictions(t5_run):
    metrics = read_json(t5_run.path / "eval_results.json")
    predictions = read_jsonl(t5_run.path / "eval_predictions.jsonl")
    rows = held_out_rows(t5_run.path)
    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    assert [p["reference"] for p in predictions] == [r["summary"] for r in rows]  # raw, newlines kept
    for name, value in rouge_recomputed(predictions).items():
        assert metrics[f"eval_{name}"] == pytest.approx(value, abs=1e-9), name


def test_eval_reproduces_training_metrics(t5_run, ftune, tmp_path):
    result = ftune("eval", t5_run.path, "--output-dir", tmp_path)
    assert result.exit_code == 0, result
    trained, evaluated = read_json(t5_run.path / "eval_results.json"), read_json(tmp_path / "eval_results.json")
    assert evaluated.keys() == trained.keys()
    for key, value in trained.items():
        assert evaluated[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert read_jsonl(tmp_path / "eval_predictions.jsonl") == read_jsonl(t5_run.path / "eval_predictions.jsonl")
    assert "eval_rougeLsum" in result.stdout


def test_predict_writes_the_same_summaries_as_evaluation(t5_run, ftune, tmp_path):
    rows = held_out_rows(t5_run.path)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "document": r["document"]} for r in rows])
    # One batch of the same rows as evaluation (eval batch size 16), so padding and outputs are the same.
    result = ftune("predict", t5_run.path, "--input", inputs, "--output", tmp_path / "out.jsonl",
                   "--batch-size", "16")
    assert result.exit_code == 0, result
    predicted = read_jsonl(tmp_path / "out.jsonl")
    evaluated = read_jsonl(t5_run.path / "eval_predictions.jsonl")
    assert [p["id"] for p in predicted] == [r["id"] for r in rows]
    assert [p["summary"] for p in predicted] == [e["prediction"] for e in evaluated]

    result = ftune("predict", t5_run.path, "--text", "cat dog bird fish", "--text", "river city",
                   "--max-new-tokens", "2", "--num-beams", "2")
    assert result.exit_code == 0, result
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["document"] for line in lines] == ["cat dog bird fish", "river city"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_run.path)
    assert all(len(tokenizer(line["summary"], add_special_tokens=False)["input_ids"]) <= 2 for line in lines)


def test_t5_prefix_is_applied_to_t5_only(t5_run, bart_lora_run, tiny_t5, tiny_bart):
    import yaml

    t5_state = yaml.safe_load((t5_run.path / "ftune.yaml").read_text())["run"]["state"]
    bart_state = yaml.safe_load((bart_lora_run.path / "ftune.yaml").read_text())["run"]["state"]
    assert t5_state["source_prefix"] == "summarize: " and t5_state["model_type"] == "t5"
    assert bart_state["source_prefix"] == "" and bart_state["model_type"] == "bart"

    # The tokenized inputs: the prefix is there for the T5 run, absent for BART.
    import datasets
    from transformers import AutoTokenizer

    from ftune.config import resolve_config
    from ftune.tasks.summarize import TASK

    rows = datasets.Dataset.from_list([{"document": "cat dog", "summary": "the cat."}])
    config = resolve_config(TASK.options_class, layers=[("test", {"data": "x", "max_length": 16,
                                                                  "max_target_length": 8})])
    for model, saved, expected in ((tiny_t5, t5_state, "summarize: cat dog"), (tiny_bart, bart_state, "cat dog")):
        state = TASK.state_class.from_dict(saved)   # as `ftune eval` reads it from ftune.yaml
        tokenizer = AutoTokenizer.from_pretrained(model)
        features = TASK.features(config, tokenizer, rows, state, purpose="eval")
        assert features[0]["input_ids"] == tokenizer(expected)["input_ids"]


def test_source_prefix_can_be_set_or_emptied(tiny_t5, tiny_bart, docs_file):
    import datasets

    from ftune.config import resolve_config
    from ftune.tasks.summarize import TASK

    rows = datasets.Dataset.from_list(summary_rows(2))
    split = SimpleNamespace(train=rows, eval=rows, eval_ids=None, train_names=None, eval_names=None)
    for model, given, expected in ((tiny_t5, "", ""), (tiny_bart, "summarize: ", "summarize: "),
                                   (tiny_bart, "auto", "")):
        flags = {"data": str(docs_file), "model": str(model), "source_prefix": given}
        config = resolve_config(TASK.options_class, layers=[("flags", flags)])
        state = TASK.prepare_state(config, split, {"source": "document", "target": "summary"})
        assert state.source_prefix == expected


def test_long_sources_are_truncated_with_a_note(t5_run):
    # --max-length 16: documents of up to 20 words do not fit; a note (not an error) says how many.
    assert "training documents are longer than 16 tokens (--max-length) and were truncated" in t5_run.output


def test_lora_round_trip_and_merge_give_equal_outputs(bart_lora_run, ftune, tmp_path):
    import torch
    from peft import AutoPeftModelForSeq2SeqLM
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    run = bart_lora_run.path
    assert (run / "adapter_config.json").is_file() and not (run / "model.safetensors").exists()
    assert read_json(run / "adapter_config.json")["task_type"] == "SEQ_2_SEQ_LM"

    result = ftune("eval", run, "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result
    trained, evaluated = read_json(run / "eval_results.json"), read_json(tmp_path / "eval" / "eval_results.json")
    for key, value in trained.items():
        assert evaluated[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    result = ftune("merge", run, "--output-dir", tmp_path / "merged")
    assert result.exit_code == 0, result
    tokenizer = AutoTokenizer.from_pretrained(run)
    documents = [r["document"] for r in held_out_rows(run)]
    encoded = tokenizer(documents, truncation=True, max_length=16, padding=True, return_tensors="pt")
    adapted = AutoPeftModelForSeq2SeqLM.from_pretrained(run).eval()
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
    labels = tokenizer(text_target=["the cat."] * len(documents), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(adapted(**encoded, labels=labels).logits, merged(**encoded, labels=labels).logits,
                                   rtol=1e-4, atol=1e-4)
        generated = [m.generate(**encoded, max_new_tokens=8) for m in (adapted, merged)]
    summaries = [tokenizer.batch_decode(g, skip_special_tokens=True) for g in generated]
    assert summaries[0] == summaries[1] and any(s.strip() for s in summaries[0])
    assert [s.strip() for s in summaries[0]] == [p["prediction"] for p in read_jsonl(run / "eval_predictions.jsonl")]


@pytest.mark.parametrize("case", ["missing-column", "empty-target", "gpt2", "bert", "same-columns"])
def test_bad_input_is_one_line_with_exit_code_2(case, ftune, tmp_path, docs_file, tiny_t5, tiny_gpt2, tiny_bert):
    args = ["--model", tiny_t5, "--data", docs_file, "--max-steps", "1"]
    expected = {
        "missing-column": "the columns are: id, document, summary",
        "empty-target": "have no value in column 'summary'",
        "gpt2": "fine-tune it with ftune lm",
        "bert": "ftune classify or ftune qa",
        "same-columns": "--source-column and --target-column are both 'document'",
    }[case]
    if case == "missing-column":
        args += ["--target-column", "abstract"]
    elif case == "empty-target":
        rows = summary_rows(10)
        rows[3]["summary"] = " "
        args[3] = write_jsonl(tmp_path / "empty.jsonl", rows)
    elif case in ("gpt2", "bert"):
        args[1] = tiny_gpt2 if case == "gpt2" else tiny_bert
    else:
        args += ["--source-column", "document", "--target-column", "document"]
    result = ftune("summarize", *args, "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "run" / "train_results.json").exists()


def test_summarize_recipes_resolve():
    found = task_recipes("summarize")
    assert set(found) >= {"summarize-t5-small", "summarize-t5-small-lora", "summarize-aclsum-offline"}
    for layer, config in found.values():
        assert "data" in layer and config.data  # every summarize recipe names its data
    assert found["summarize-t5-small-lora"][0]["lora"] is True


@pytest.mark.numerics
def test_gradient_accumulation_does_not_scale_the_loss(ftune, tiny_t5, docs_file, tmp_path):
    """The seq2seq loss is a mean over its batch: 2 x 4 accumulated rows log the loss of 8 rows, not twice it
    (transformers would not divide, reading the model's **kwargs as a token-count normalisation)."""
    losses = []
    for name, batch in (("one", ["--batch-size", "8"]), ("accumulated", ["--batch-size", "4", "--grad-accum", "2"])):
        result = ftune("summarize", "--model", tiny_t5, "--data", docs_file, "--output-dir", tmp_path / name,
                       "--max-steps", "1", "--max-length", "16", "--max-target-length", "8", "--logging-steps", "1",
                       "--no-group-by-length", "--precision", "fp32", *batch)
        assert result.exit_code == 0, result
        losses.append(read_json(tmp_path / name / "trainer_state.json")["log_history"][0]["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=0.25)  # dropout differs; a doubled loss would not pass
