"""`ftune classify` end to end on a tiny BERT: train, eval, predict, merge — full and LoRA."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import invoke, read_json, read_jsonl

# In fp32 on every CPU: auto trains in bf16 on CPUs with AMX, and the figures asserted here come from training.
FAST = ["--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--logging-steps", "5",
        "--precision", "fp32"]


def sentiment_rows(n: int, seed: int = 0, labels=("negative", "positive")) -> list[dict]:
    """A learnable task: the sentiment word decides the label; the rest is noise."""
    rng = random.Random(seed)
    cue = {"negative": ["bad", "terrible", "sad"], "positive": ["good", "great", "happy"],
           "neutral": ["paper", "data", "city"]}
    filler = "the a cat dog house tree river city model story".split()
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(filler) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(cue[label]))
        rows.append({"id": f"r{i}", "text": " ".join(words), "label": label})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sentiment_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(120))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_bert, sentiment_file):
    out = tmp_path_factory.mktemp("runs") / "full"
    result = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", out,
                    "--val-fraction", "0.25", *FAST, "--epochs", "6")  # 3 epochs learn the task on half the seeds only
    assert result.exit_code == 0, result
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, sentiment_file):
    out = tmp_path_factory.mktemp("runs") / "lora"
    result = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", out, "--lora",
                    "--lora-r", "16", "--lora-targets", "query,key,value,dense", *FAST, "--epochs", "8", "--lr", "5e-3")
    assert result.exit_code == 0, result
    return out


@pytest.mark.numerics
def test_full_run_writes_the_run_directory(full_run):
    names = {p.name for p in full_run.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "ftune.yaml",
                "split.json", "train_results.json", "trainer_state.json", "eval_results.json",
                "eval_predictions.jsonl", "eval_details.json", "README.md", "learning_curves.png",
                "confusion_matrix.png"}
    assert expected <= names
    assert not [n for n in names if n.startswith("checkpoint-") or n == ".ftune.lock"]
    metrics = read_json(full_run / "eval_results.json")
    assert {"eval_accuracy", "eval_f1", "eval_precision", "eval_recall"} <= metrics.keys()
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("eval_accuracy", "eval_f1", "eval_precision", "eval_recall"))
    assert metrics["eval_accuracy"] >= 0.8, metrics  # the task is learnable: the tiny model must learn it
    card = (full_run / "README.md").read_text()
    assert "eval_accuracy" in card and "classify" in card


def test_split_is_stratified_and_recorded(full_run):
    split = read_json(full_run / "split.json")
    assert split["method"] == "fraction" and split["stratified"] and split["seed"] == 42
    assert split["rows"] == 30 and split["train_rows"] == 90 and len(split["indices"]) == 30
    predictions = read_jsonl(full_run / "eval_predictions.jsonl")
    references = [p["reference"] for p in predictions]
    assert references.count("positive") == references.count("negative") == 15


def test_metrics_recomputed_from_predictions(full_run):
    predictions = read_jsonl(full_run / "eval_predictions.jsonl")
    metrics = read_json(full_run / "eval_results.json")
    assert len(predictions) == metrics["eval_samples"] == 30
    assert {"id", "prediction", "reference"} <= predictions[0].keys()
    # Each line belongs to its row: the reference is that row's label (30 rows span two eval batches).
    by_id = {row["id"]: row["label"] for row in sentiment_rows(120)}
    assert all(by_id[p["id"]] == p["reference"] for p in predictions)
    accuracy = sum(p["prediction"] == p["reference"] for p in predictions) / len(predictions)
    assert accuracy == pytest.approx(metrics["eval_accuracy"])
    f1s = []
    for label in ("negative", "positive"):
        tp = sum(p["prediction"] == label == p["reference"] for p in predictions)
        predicted = sum(p["prediction"] == label for p in predictions)
        actual = sum(p["reference"] == label for p in predictions)
        precision, recall = (tp / predicted if predicted else 0.0), (tp / actual if actual else 0.0)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert sum(f1s) / 2 == pytest.approx(metrics["eval_f1"])
    details = read_json(full_run / "eval_details.json")
    assert sum(map(sum, details["confusion_matrix"]["matrix"])) == 30


def test_eval_reproduces_training_metrics(full_run, ftune, tmp_path):
    trained = read_json(full_run / "eval_results.json")
    result = ftune("eval", full_run, "--output-dir", tmp_path)
    assert result.exit_code == 0, result
    again = read_json(tmp_path / "eval_results.json")
    for key in ("eval_accuracy", "eval_f1", "eval_precision", "eval_recall"):
        assert again[key] == trained[key]
    assert again["eval_loss"] == pytest.approx(trained["eval_loss"], abs=1e-5)
    assert "eval_accuracy" in result.stdout and "confusion matrix" in result.stdout


def test_a_run_trained_on_a_relative_data_path_rescores_from_another_folder(tiny_bert, sentiment_file, tmp_path,
                                                                           monkeypatch, ftune):
    monkeypatch.chdir(sentiment_file.parent)
    run = tmp_path / "run"
    result = ftune("classify", "--model", tiny_bert, "--data", sentiment_file.name, "--output-dir", run,
                   "--val-fraction", "0.25", *FAST, "--epochs", "1")
    assert result.exit_code == 0, result
    assert read_json(run / "split.json")["source"] == sentiment_file.name   # recorded as the user gave it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = ftune("eval", run, "--output-dir", tmp_path / "scored")
    assert result.exit_code == 0, result
    assert read_jsonl(tmp_path / "scored" / "eval_predictions.jsonl") == read_jsonl(run / "eval_predictions.jsonl")


def test_config_and_labels_recorded(full_run):
    import yaml

    saved = yaml.safe_load((full_run / "ftune.yaml").read_text())
    assert saved["lr"] == 3e-3 and saved["epochs"] == 6 and saved["run"]["task"] == "classify"
    assert saved["run"]["state"]["labels"] == ["negative", "positive"]
    assert "transformers" in saved["run"]["versions"]
    config = read_json(full_run / "config.json")
    assert config["id2label"] == {"0": "negative", "1": "positive"}


def test_full_run_loads_with_transformers_and_pipeline(full_run, ftune):
    from transformers import AutoModelForSequenceClassification, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(full_run)
    assert model.config.num_labels == 2
    classifier = pipeline("text-classification", model=str(full_run))
    out = classifier("the cat is great")[0]
    result = ftune("predict", full_run, "--text", "the cat is great")
    assert result.exit_code == 0, result
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["label"] == out["label"] and row["score"] == pytest.approx(out["score"], abs=1e-5)


@pytest.mark.numerics
def test_predict_input_file_to_csv(full_run, ftune, tmp_path):
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": "great happy dog"}, {"text": "terrible sad cat"}])
    result = ftune("predict", full_run, "--input", inputs, "--output", tmp_path / "out.csv")
    assert result.exit_code == 0, result
    import csv

    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert all(0.5 < float(r["score"]) <= 1.0 for r in rows)


@pytest.mark.numerics
def test_lora_run_trains_head_and_round_trips(lora_run, ftune, tmp_path):
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert (lora_run / "adapter_config.json").is_file() and (lora_run / "adapter_model.safetensors").is_file()
    assert not (lora_run / "model.safetensors").exists()
    metrics = read_json(lora_run / "eval_results.json")
    assert metrics["eval_accuracy"] >= 0.7, metrics  # a random-init base adapts slowly; chance is 0.5

    result = ftune("eval", lora_run, "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result
    assert read_json(tmp_path / "eval" / "eval_results.json")["eval_f1"] == metrics["eval_f1"]

    labels = ["negative", "positive"]
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(
        lora_run, num_labels=2, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    batch = tokenizer(["great dog", "bad sad tree river"], padding=True, return_tensors="pt")
    with torch.no_grad():
        adapter_logits = adapter.eval()(**batch).logits

    merged_dir = tmp_path / "merged"
    result = ftune("merge", lora_run, "--output-dir", merged_dir)
    assert result.exit_code == 0, result
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-4)
    assert merged.config.id2label[1] == "positive"

    again = ftune("merge", lora_run, "--output-dir", merged_dir)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_merge_refuses_a_full_run(full_run, ftune, tmp_path):
    result = ftune("merge", full_run, "--output-dir", tmp_path / "m")
    assert result.exit_code == 2 and "full fine-tune" in result.stderr


def test_text_pairs_with_int_labels(tiny_bert, ftune, tmp_path):
    rng = random.Random(1)
    rows = []
    for i in range(60):
        same = i % 2
        a = rng.choice(["cat", "dog", "bird"])
        b = a if same else rng.choice([w for w in ["cat", "dog", "bird"] if w != a])
        rows.append({"premise": f"the {a} runs", "hypothesis": f"a {b} sleeps", "label": same})
    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows[:48])
    write_jsonl(data / "validation.jsonl", rows[48:])
    out = tmp_path / "run"
    result = ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", out, "--max-steps", "4",
                   "--batch-size", "8")
    assert result.exit_code == 0, result
    split = read_json(out / "split.json")
    assert split["method"] == "split" and split["eval_split"] == "validation" and split["rows"] == 12
    import yaml

    state = yaml.safe_load((out / "ftune.yaml").read_text())["run"]["state"]
    assert state["columns"] == {"text": "premise", "text_pair": "hypothesis", "label": "label"}
    assert state["labels"] == ["0", "1"]
    missing_pair = ftune("predict", out, "--text", "the cat runs")
    assert missing_pair.exit_code == 2 and "--text-pair" in missing_pair.stderr
    ok = ftune("predict", out, "--text", "the cat runs", "--text-pair", "a cat sleeps")
    assert ok.exit_code == 0 and json.loads(ok.stdout.splitlines()[-1])["label"] in ("0", "1")


def test_interrupted_run_is_resumable(tiny_bert, sentiment_file, ftune, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    import ftune.train as spine

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    original = spine.build_trainer

    def build_with_interrupt(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(Interrupt())
        return trainer

    out = tmp_path / "run"
    args = ["classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", out, "--max-steps", "6",
            "--eval-steps", "3", "--checkpoint-minutes", "0", "--batch-size", "8"]
    monkeypatch.setattr(spine, "build_trainer", build_with_interrupt)
    interrupted = ftune(*args)
    assert interrupted.exit_code == 130 and "--resume" in interrupted.stderr
    monkeypatch.setattr(spine, "build_trainer", original)
    assert (out / "checkpoint-3").is_dir() and not (out / "train_results.json").exists()
    assert not (out / ".ftune.lock").exists()

    not_finished = ftune("eval", out)
    assert not_finished.exit_code == 2 and "did not finish" in not_finished.stderr
    refused = ftune(*args)
    assert refused.exit_code == 2 and "--resume" in refused.stderr

    resumed = ftune(*args, "--resume")
    assert resumed.exit_code == 0, resumed
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 6
    assert (out / "train_results.json").is_file() and not (out / "checkpoint-3").exists()


def test_finished_run_is_not_overwritten(full_run, tiny_bert, sentiment_file, ftune):
    before = (full_run / "eval_results.json").read_text()
    refused = ftune("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", full_run)
    assert refused.exit_code == 2
    assert "finished run" in refused.stderr and "--overwrite" in refused.stderr
    assert (full_run / "eval_results.json").read_text() == before


def test_labels_that_mean_the_same_class_are_one_class(tiny_bert, ftune, tmp_path):
    """1 and 1.0 in one numeric column (a CSV reads both as floats; JSON keeps both) are the class "1"."""
    rows = [{"text": f"good dog {i}" if i % 2 else f"bad cat {i}", "label": [1, 1.0, 2, 2.0][i % 4]}
            for i in range(40)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run", "--max-steps",
                   "1", "--batch-size", "8")
    assert result.exit_code == 0, result
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "ftune.yaml").read_text())["run"]["state"]["labels"] == ["1", "2"]
    references = {p["reference"] for p in read_jsonl(tmp_path / "run" / "eval_predictions.jsonl")}
    assert references <= {"1", "2"}


def test_eval_on_other_data_never_replaces_the_recorded_results(full_run, ftune, tmp_path):
    recorded = {name: (full_run / name).read_bytes() for name in ("eval_results.json", "eval_predictions.jsonl")}
    other = write_jsonl(tmp_path / "news.jsonl", sentiment_rows(6, seed=3))
    result = ftune("eval", full_run, "--data", other)
    assert result.exit_code == 0, result
    folder = full_run / "evals" / "news-train"
    assert f"wrote {folder / 'eval_results.json'}" in result.stdout
    assert read_json(folder / "eval_results.json")["eval_samples"] == 6
    assert [p["id"] for p in read_jsonl(folder / "eval_predictions.jsonl")] == [f"r{i}" for i in range(6)]
    assert {name: (full_run / name).read_bytes() for name in recorded} == recorded
    again = ftune("eval", full_run, "--data", other)  # an earlier result folder of ftune's is rewritten
    assert again.exit_code == 0, again


def test_trained_with_the_first_token_layer_and_scored_with_the_models_own(tiny_bert, sentiment_file, tmp_path,
                                                                            monkeypatch):
    """On a CPU the last layer trains at the first token only and attention is eager (ftune.cpu); the final scoring
    and the saved model use the model's own layer and attention, as `ftune eval` loads it."""
    import torch

    import ftune.cpu.first_token
    import ftune.train

    if torch.cuda.is_available():
        pytest.skip("the first-token layer is applied on CPUs only")
    patched, own_when_scored = [], []
    first_token = ftune.cpu.first_token.first_token_last_layer
    score = ftune.train.score_held_out

    def recording_first_token(model):
        patched.append((first_token(model), model.config._attn_implementation))
        return patched[-1][0]

    def recording_score(task, config, trainer, prepared):
        own_when_scored.append(("forward" not in prepared.model.bert.encoder.layer[-1].__dict__,
                                prepared.model.config._attn_implementation))
        return score(task, config, trainer, prepared)

    monkeypatch.setattr(ftune.cpu.first_token, "first_token_last_layer", recording_first_token)
    monkeypatch.setattr(ftune.train, "score_held_out", recording_score)
    result = invoke("classify", "--model", tiny_bert, "--data", sentiment_file, "--output-dir", tmp_path / "run",
                    *FAST)
    assert result.exit_code == 0, result
    assert patched == [(True, "eager")] and own_when_scored == [(True, "sdpa")]  # sdpa: the tiny model's own
