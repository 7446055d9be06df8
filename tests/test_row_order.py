"""Per-row results are as exact as totals, for every task.

Held-out rows of very different lengths (so that any reordering by length shows) are trained on with ftune's
defaults (length-grouped batches). Then, for every task:
- each line of eval_predictions.jsonl belongs to its row: its id names the source row and its reference is
  that row's own;
- a row's prediction is the same when it is scored with its split and when it is scored alone
  (`ftune eval RUN --data one-row-file`);
- `ftune predict` on the row gives what eval_predictions.jsonl holds (classify, qa, summarize).
"""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import invoke, read_json, read_jsonl

WORDS = "the a cat dog bird fish house tree river city paper model data story".split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def varied_lengths(n: int) -> list[int]:
    """Lengths from very short to long, shuffled so neighbours differ."""
    rng = random.Random(7)
    lengths = [2 + (i * 53) % 60 for i in range(n)]
    rng.shuffle(lengths)
    return lengths


def train(tmp_path, task: str, *args) -> object:
    run = tmp_path / "run"
    result = invoke(task, "--output-dir", run, *args)
    assert result.exit_code == 0, result
    return run


def score_alone(run, row: dict, tmp_path, name: str) -> dict:
    """The row's line of eval_predictions.jsonl when `ftune eval` scores it on its own."""
    one = write_jsonl(tmp_path / f"{name}.jsonl", [row])
    out = tmp_path / f"{name}-eval"
    result = invoke("eval", run, "--data", one, "--output-dir", out)
    assert result.exit_code == 0, result
    (line,) = read_jsonl(out / "eval_predictions.jsonl")
    return line


def pick(predictions: list[dict], rows_by_id: dict, length) -> list[dict]:
    """The held-out predictions of the shortest and the longest rows (by `length(row)`)."""
    ordered = sorted(predictions, key=lambda p: length(rows_by_id[p["id"]]))
    return [ordered[0], ordered[-1]]


# ---- classify -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pair"])
def test_classify_rows_keep_their_predictions(pairs, tiny_bert, tmp_path):
    rng = random.Random(1)
    rows = []
    for i, n in enumerate(varied_lengths(48)):
        label = ("negative", "positive")[i % 2]
        text = words(rng, n) + (" great" if label == "positive" else " bad")
        row = {"id": f"c{i}", "text": text, "label": label}
        if pairs:
            row = {"id": row["id"], "premise": text, "hypothesis": words(rng, 62 - n), "label": label}
        rows.append(row)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = train(tmp_path, "classify", "--model", tiny_bert, "--data", data, "--val-fraction", "0.5",
                "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3")
    by_id = {r["id"]: r for r in rows}
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert len(predictions) == 24
    assert all(p["reference"] == by_id[p["id"]]["label"] for p in predictions)
    text = "premise" if pairs else "text"
    for held in pick(predictions, by_id, lambda r: len(r[text])):
        alone = score_alone(run, by_id[held["id"]], tmp_path, held["id"])
        assert alone["id"] == held["id"] and alone["prediction"] == held["prediction"]
        assert alone["score"] == pytest.approx(held["score"], abs=1e-5)
        args = ["--text", by_id[held["id"]][text]]
        if pairs:
            args += ["--text-pair", by_id[held["id"]]["hypothesis"]]
        predicted = invoke("predict", run, *args)
        assert predicted.exit_code == 0, predicted
        line = json.loads(predicted.stdout.strip().splitlines()[-1])
        assert line["label"] == held["prediction"] and line["score"] == pytest.approx(held["score"], abs=1e-5)


def test_ids_without_an_id_column_are_positions_in_the_source_split(tiny_bert, tmp_path):
    rows = [{"text": words(random.Random(i), 3 + i % 9) + (" great" if i % 2 else " bad"),
             "label": "positive" if i % 2 else "negative"} for i in range(30)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = train(tmp_path, "classify", "--model", tiny_bert, "--data", data, "--max-steps", "1", "--batch-size", "4",
                "--val-fraction", "0.3")
    split = read_json(run / "split.json")
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert [p["id"] for p in predictions] == split["indices"]
    assert all(p["reference"] == rows[p["id"]]["label"] for p in predictions)
    # Other data: positions in that data's split.
    other = write_jsonl(tmp_path / "other.jsonl", rows[:5])
    result = invoke("eval", run, "--data", other, "--output-dir", tmp_path / "other")
    assert result.exit_code == 0, result
    assert [p["id"] for p in read_jsonl(tmp_path / "other" / "eval_predictions.jsonl")] == [0, 1, 2, 3, 4]


# ---- lm -------------------------------------------------------------------------------------------


def _lm_rows(shape: str) -> list[dict]:
    rng = random.Random(2)
    rows = []
    for i, n in enumerate(varied_lengths(40)):
        if shape == "text":
            rows.append({"id": f"t{i}", "text": words(rng, n)})
        elif shape == "completion":
            rows.append({"id": f"p{i}", "prompt": f"say {words(rng, 1)}:", "completion": " " + words(rng, n)})
        else:
            rows.append({"id": f"m{i}", "messages": [{"role": "user", "content": words(rng, 2)},
                                                     {"role": "assistant", "content": words(rng, n)}]})
    return rows


def _scored_tokens(shape: str, row: dict, tokenizer) -> int:
    """What the row's `tokens` must be, counted independently of ftune's batching."""
    from ftune.tasks.lm.encoding import IGNORE, encode_chat

    if shape == "text":
        return len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
    if shape == "completion":
        return len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
    _, labels = encode_chat(tokenizer, row["messages"], 10_000)
    return sum(label != IGNORE for label in labels[1:])  # the first token is never a target


@pytest.mark.parametrize("shape", ["text", "completion", "chat"])
def test_lm_rows_keep_their_losses_and_token_counts(shape, tiny_gpt2, tmp_path):
    from transformers import AutoTokenizer

    from tests.conftest import CHAT_TEMPLATE

    model = tiny_gpt2
    if shape == "chat":
        import shutil

        model = tmp_path / "chat-gpt2"
        shutil.copytree(tiny_gpt2, model)
        tokenizer = AutoTokenizer.from_pretrained(model)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = _lm_rows(shape)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = train(tmp_path, "lm", "--model", model, "--data", data, "--val-fraction", "0.5", "--max-steps", "2",
                "--batch-size", "4", "--block-size", "32")
    by_id = {r["id"]: r for r in rows}
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    metrics = read_json(run / "eval_results.json")
    assert len(predictions) == 20 and metrics["eval_samples"] == 20
    for p in predictions:
        assert p["tokens"] == _scored_tokens(shape, by_id[p["id"]], tokenizer), p
        if shape == "completion":
            assert p["reference"] == by_id[p["id"]]["completion"]
    total = sum(p["loss_sum"] for p in predictions) / sum(p["tokens"] for p in predictions)
    assert metrics["eval_loss"] == pytest.approx(total, rel=1e-9)
    assert metrics["eval_tokens"] == sum(p["tokens"] for p in predictions)
    length = (lambda r: len(r["text"])) if shape == "text" else (lambda r: len(json.dumps(r)))
    for held in pick(predictions, by_id, length):
        alone = score_alone(run, by_id[held["id"]], tmp_path, held["id"])
        assert alone["id"] == held["id"] and alone["tokens"] == held["tokens"]
        assert alone["prediction"] == pytest.approx(held["prediction"], rel=1e-5)


# ---- qa -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version_2", [False, True], ids=["v1", "v2"])
def test_qa_rows_keep_their_answers(version_2, tiny_bert, tmp_path):
    from tests.test_qa import CAPITALS

    rng = random.Random(3)
    rows = []
    for i, n in enumerate(varied_lengths(32)):
        country = rng.choice(list(CAPITALS))
        context = f"{words(rng, n)}. the capital of {country} is {CAPITALS[country]}. {words(rng, 60 - n)}."
        asked = country if not (version_2 and i % 4 == 3) else next(c for c in CAPITALS if c != country)
        answers = {"text": [], "answer_start": []}
        if asked == country:
            answers = {"text": [CAPITALS[country]],
                       "answer_start": [context.index(f" is {CAPITALS[country]}.") + 4]}
        rows.append({"id": f"q{i}", "question": f"what is the capital of {asked}?", "context": context,
                     "answers": answers})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = train(tmp_path, "qa", "--model", tiny_bert, "--data", data, "--val-fraction", "0.5", "--max-steps", "3",
                "--batch-size", "4", "--lr", "2e-3", "--max-length", "48", "--doc-stride", "16")
    assert read_json(run / "eval_results.json")["eval_windows"] > 16  # long contexts made several windows
    by_id = {r["id"]: r for r in rows}
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert all(p["reference"] == by_id[p["id"]]["answers"]["text"] for p in predictions)
    for held in pick(predictions, by_id, lambda r: len(r["context"])):
        row = by_id[held["id"]]
        alone = score_alone(run, row, tmp_path, held["id"])
        assert alone["id"] == held["id"] and alone["prediction"] == held["prediction"]
        assert alone["score"] == pytest.approx(held["score"], abs=1e-5)
        predicted = invoke("predict", run, "--question", row["question"], "--context", row["context"])
        assert predicted.exit_code == 0, predicted
        line = json.loads(predicted.stdout.strip().splitlines()[-1])
        assert line["answer"] == held["prediction"] and line["score"] == pytest.approx(held["score"], abs=1e-5)


# ---- summarize ------------------------------------------------------------------------------------


def test_summarize_rows_keep_their_summaries(tiny_t5, tmp_path):
    rng = random.Random(4)
    rows = []
    for i, n in enumerate(varied_lengths(24)):
        document = words(rng, n)
        rows.append({"id": f"d{i}", "document": document, "summary": " ".join(document.split()[:2])})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = train(tmp_path, "summarize", "--model", tiny_t5, "--data", data, "--val-fraction", "0.5", "--max-steps",
                "4", "--batch-size", "4", "--lr", "3e-3", "--max-length", "64", "--max-target-length", "6")
    by_id = {r["id"]: r for r in rows}
    predictions = read_jsonl(run / "eval_predictions.jsonl")
    assert all(p["reference"] == by_id[p["id"]]["summary"] for p in predictions)
    for held in pick(predictions, by_id, lambda r: len(r["document"])):
        row = by_id[held["id"]]
        alone = score_alone(run, row, tmp_path, held["id"])
        assert alone["id"] == held["id"] and alone["prediction"] == held["prediction"]
        assert alone["generated_tokens"] == held["generated_tokens"]
        predicted = invoke("predict", run, "--text", row["document"])
        assert predicted.exit_code == 0, predicted
        assert json.loads(predicted.stdout.strip().splitlines()[-1])["summary"] == held["prediction"]


def test_predictions_of_a_whole_file_equal_eval_predictions(tiny_bert, tmp_path):
    """`ftune predict --input` on the held-out rows, in another batch size: the same labels, row for row."""
    rng = random.Random(5)
    rows = [{"id": f"r{i}", "text": words(rng, n) + (" great" if i % 2 else " bad"),
             "label": "positive" if i % 2 else "negative"} for i, n in enumerate(varied_lengths(40))]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = train(tmp_path, "classify", "--model", tiny_bert, "--data", data, "--val-fraction", "0.5", "--max-steps",
                "2", "--batch-size", "4")
    held = read_jsonl(run / "eval_predictions.jsonl")
    by_id = {r["id"]: r for r in rows}
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": p["id"], "text": by_id[p["id"]]["text"]} for p in held])
    result = invoke("predict", run, "--input", inputs, "--output", tmp_path / "out.jsonl", "--batch-size", "3")
    assert result.exit_code == 0, result
    predicted = read_jsonl(tmp_path / "out.jsonl")
    assert [p["id"] for p in predicted] == [h["id"] for h in held]
    assert [p["label"] for p in predicted] == [h["prediction"] for h in held]
    assert [p["score"] for p in predicted] == pytest.approx([h["score"] for h in held], abs=1e-5)
