"""`ftune board`'s data and JSON API on tiny-model runs: classify (two runs on one split, with confused classes; one
on another split), ner, qa and a 2-trial sweep under one folder, with a broken run folder beside them.

Each answer is checked against the run's own files: the runs list and a run's metrics against eval_results.json,
a confusion cell's rows against the lines of eval_predictions.jsonl with that reference and prediction, paging
against every line once, "wrong" against a recomputation per task, compare's fixed/broken counts against the two
files, the sweep against trials.jsonl, try-it against `ftune predict`. The board writes nothing (every file under
the runs hashed before and after every endpoint), a deleted run answers 404 saying its folder is gone, the API key
guards everything, and the command itself serves on `--port 0`, refuses a taken port and an open host without a
key in one line. A synthetic 100k-row run logs its first page's time (`-s` shows it; not asserted).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import invoke, read_json, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_errors import assert_usage_error, tree_digest
from tests.test_ner import sentences, write_conll
from tests.test_qa import qa_rows

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"at (http://\S+)/")
SCORE_TOLERANCE = 1e-5      # the spec's: a served score equals ftune predict's within this
TRAIN = ["--batch-size", "8", "--max-length", "32", "--logging-steps", "2", "--precision", "fp32"]
LABELS = ("negative", "positive", "neutral")


@pytest.fixture(scope="module")
def board_runs(tmp_path_factory, tiny_bert):
    """The board folder: runs of each kind, a sweep, a broken run; and the data they were trained on."""
    root = tmp_path_factory.mktemp("board") / "runs"
    data = tmp_path_factory.mktemp("board-data")
    sentiment = write_jsonl(data / "sentiment.jsonl", sentiment_rows(90, labels=LABELS))
    classify = ["classify", "--model", tiny_bert, "--data", sentiment, "--val-fraction", "0.3", *TRAIN]
    # Few steps: the untrained run confuses the classes; the longer one fixes some rows (and may break others).
    for name, extra in (("classify-a", ["--max-steps", "2"]), ("classify-b", ["--max-steps", "12", "--lr", "3e-3"]),
                        ("classify-other-split", ["--max-steps", "1", "--val-fraction", "0.2"])):
        result = invoke(*classify, *extra, "--output-dir", root / name)
        assert result.exit_code == 0, result
    news = write_jsonl(data / "news.jsonl", sentiment_rows(12, seed=3, labels=LABELS))
    result = invoke("eval", root / "classify-b", "--data", news)   # into classify-b/evals/news-train
    assert result.exit_code == 0, result
    conll = data / "conll"
    conll.mkdir()
    write_conll(conll / "train.txt", sentences(60, seed=0))
    write_conll(conll / "dev.txt", sentences(15, seed=1))
    result = invoke("ner", "--model", tiny_bert, "--data", conll, "--max-steps", "6", "--lr", "3e-3", *TRAIN,
                    "--output-dir", root / "ner")
    assert result.exit_code == 0, result
    squad = write_jsonl(data / "qa.jsonl", qa_rows(40, 0))
    result = invoke("qa", "--model", tiny_bert, "--data", squad, "--max-steps", "4", "--val-fraction", "0.2",
                    "--batch-size", "8", "--max-length", "64", "--doc-stride", "16", "--precision", "fp32",
                    "--output-dir", root / "qa")
    assert result.exit_code == 0, result
    result = invoke("sweep", "classify", "--model", tiny_bert, "--data", sentiment, "--val-fraction", "0.3",
                    "--max-steps", "2", "--batch-size", "8", "--max-length", "16", "--precision", "fp32",
                    "--param", "lr=1e-3..3e-2:log", "--trials", "2", "--seed", "42", "--output-dir", root / "sweep")
    assert result.exit_code == 0, result
    broken = root / "broken"
    shutil.copytree(root / "classify-a", broken)
    (broken / "eval_results.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def client(board_runs):
    from fastapi.testclient import TestClient

    from ftune.board.server import create_app

    with TestClient(create_app([board_runs])) as test_client:
        yield test_client


def get(client, url: str, **params) -> dict:
    response = client.get(url, params=params)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response.json()


def all_rows(client, run_id: str, page: int = 500, **params) -> list[dict]:
    """Every row the rows endpoint gives for `params`, page by page."""
    rows, offset = [], 0
    while True:
        answer = get(client, f"/api/runs/{run_id}/rows", offset=offset, limit=page, **params)
        rows += answer["rows"]
        offset += page
        if offset >= answer["total"]:
            assert len(rows) == answer["total"]
            return rows


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code and "\n" not in error["message"], error
    return error["message"]


# ---- the runs, a run ------------------------------------------------------------------------------


def test_the_runs_list_shows_every_run_with_its_figures_and_the_broken_one_with_why(client, board_runs):
    listing = get(client, "/api/runs")
    runs = {run["id"]: run for run in listing["runs"]}
    assert set(runs) == {"classify-a", "classify-b", "classify-other-split", "ner", "qa", "sweep/trial-000",
                         "sweep/trial-001"}
    for run_id, run in runs.items():
        results = read_json(board_runs / run_id / "eval_results.json")
        assert run["metrics"] == {k: v for k, v in results.items() if isinstance(v, (int, float))}
        assert run["status"] == "finished" and run["method"] == "full"
        assert run["main_metric"]["value"] == results[run["main_metric"]["name"]]
    assert runs["ner"]["task"] == "ner" and runs["qa"]["task"] == "qa"
    assert runs["sweep/trial-000"]["sweep"] == "sweep" and runs["classify-a"]["sweep"] is None
    assert [s["id"] for s in listing["sweeps"]] == ["sweep"] and listing["sweeps"][0]["trials"] == 2
    assert [(b["id"], b["why"]) for b in listing["broken"]] == [
        ("broken", "eval_results.json is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
                   "column 2 (char 1))")]
    assert "how_to_start" not in listing


def test_a_run_shows_its_metrics_details_pictures_curves_and_card(client, board_runs):
    run = get(client, "/api/runs/classify-a")
    folder = board_runs / "classify-a"
    assert run["metrics"] == read_json(folder / "eval_results.json")
    assert run["details"] == read_json(folder / "eval_details.json")
    assert run["model_card"] == (folder / "README.md").read_text()
    assert run["config"]["run"]["task"] == "classify" and "indices" not in run["split"]
    assert {p["file"] for p in run["pictures"]} == {"confusion_matrix.png", "learning_curves.png"}
    for picture in run["pictures"]:
        response = client.get(picture["url"])
        assert response.status_code == 200 and response.content == (folder / picture["file"]).read_bytes()
    history = read_json(folder / "trainer_state.json")["log_history"]
    assert run["curves"]["train"]["loss"] == [[e["step"], e["loss"]] for e in history if "loss" in e]
    assert run["curves"]["eval"]["eval_f1"] == [[e["step"], e["eval_f1"]] for e in history if "eval_f1" in e]
    assert_error(client.get("/api/runs/classify-a/files/model.safetensors"), 404, "unknown_file")
    assert client.get("/api/runs/classify-a/files/..%2Fqa%2FREADME.md").status_code == 404   # no way out


def test_an_evaluation_on_other_data_is_shown_with_its_own_figures_and_lines(client, board_runs):
    folder = board_runs / "classify-b" / "evals" / "news-train"
    assert {run["id"]: run["evals"] for run in get(client, "/api/runs")["runs"]}["classify-b"] == ["news-train"]
    run = get(client, "/api/runs/classify-b", eval="news-train")
    assert run["metrics"] == read_json(folder / "eval_results.json") != read_json(board_runs / "classify-b" /
                                                                                  "eval_results.json")
    assert run["details"] == read_json(folder / "eval_details.json") and run["evaluation"] == "news-train"
    assert {p["url"] for p in run["pictures"]} == {"/api/runs/classify-b/files/confusion_matrix.png?eval=news-train"}
    lines = read_jsonl(folder / "eval_predictions.jsonl")
    rows = all_rows(client, "classify-b", eval="news-train")
    assert [(r["id"], r["prediction"], r["reference"]) for r in rows] == \
        [(line["id"], line["prediction"], line["reference"]) for line in lines]
    assert all(row["text"] is None and "no split.json" in row["text_missing"] for row in rows)
    assert_error(client.get("/api/runs/classify-b", params={"eval": "nope"}), 404, "unknown_evaluation")


# ---- rows -----------------------------------------------------------------------------------------


def test_a_confusion_cell_lists_exactly_the_lines_with_that_reference_and_prediction(client, board_runs):
    lines = read_jsonl(board_runs / "classify-a" / "eval_predictions.jsonl")
    confusion = get(client, "/api/runs/classify-a")["details"]["confusion_matrix"]
    assert sum(1 for line in lines if line["prediction"] != line["reference"]) > 0, "the run should confuse classes"
    for r, reference in enumerate(confusion["labels"]):
        for p, prediction in enumerate(confusion["labels"]):
            rows = all_rows(client, "classify-a", reference=reference, prediction=prediction)
            expected = [line["id"] for line in lines if line["reference"] == reference
                        and line["prediction"] == prediction]
            assert [row["id"] for row in rows] == expected
            assert len(rows) == confusion["matrix"][r][p]


def test_paging_covers_every_row_once_in_each_sort(client, board_runs):
    lines = read_jsonl(board_runs / "classify-b" / "eval_predictions.jsonl")
    for sort in ("id", "confidence", "length"):
        for order in ("asc", "desc"):
            rows = all_rows(client, "classify-b", page=7, sort=sort, order=order)
            assert Counter(row["id"] for row in rows) == Counter(line["id"] for line in lines)
            if sort == "id":   # the held-out order, the lines' order
                expected = [line["id"] for line in lines]
                assert [row["id"] for row in rows] == (expected[::-1] if order == "desc" else expected)
                continue
            values = [row[sort.replace("confidence", "score")] for row in rows]
            assert values == sorted(values, reverse=order == "desc")


def test_rows_carry_the_held_out_input_rows_of_the_split(client, board_runs):
    split = read_json(board_runs / "classify-a" / "split.json")
    source = read_jsonl(split["source"])
    expected = {source[i]["id"]: source[i]["text"] for i in split["indices"]}
    rows = all_rows(client, "classify-a")
    assert {row["id"]: row["text"]["text"] for row in rows} == expected
    assert all(row["length"] == len(expected[row["id"]]) for row in rows)
    needle = rows[0]["text"]["text"].split()[1].upper()
    found = all_rows(client, "classify-a", q=needle)
    searched = {row["id"]: " ".join([row["text"]["text"], row["reference"], row["prediction"]]) for row in rows}
    assert {row["id"] for row in found} == {i for i, text in searched.items() if needle.lower() in text.lower()}
    shortest = min(row["length"] for row in rows)
    assert {row["id"] for row in all_rows(client, "classify-a", max_length=shortest)} == \
        {row["id"] for row in rows if row["length"] == shortest}


def squad_normal(text: str) -> str:
    """The SQuAD answer normalisation, written out here to recompute qa's wrong rows independently."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


@pytest.mark.parametrize("run_id", ["classify-a", "ner", "qa"])
def test_wrong_rows_are_those_the_task_counts_wrong(client, board_runs, run_id):
    lines = read_jsonl(board_runs / run_id / "eval_predictions.jsonl")
    if run_id == "qa":
        expected = [line["id"] for line in lines
                    if squad_normal(line["prediction"]) not in {squad_normal(g) for g in line["reference"]}]
    else:  # classify: the label; ner: the sentence's tags
        expected = [line["id"] for line in lines if line["prediction"] != line["reference"]]
    assert expected, f"the {run_id} run should get rows wrong"
    assert [row["id"] for row in all_rows(client, run_id, wrong="true")] == expected
    assert [row["id"] for row in all_rows(client, run_id, wrong="false")] == \
        [line["id"] for line in lines if line["id"] not in expected]
    answer = get(client, f"/api/runs/{run_id}/rows", wrong="true", sort="confidence", order="desc")
    scores = [row["score"] for row in answer["rows"]]
    assert scores == sorted(scores, reverse=True) and answer["wrong_means"]


def test_ner_and_qa_rows_mark_entities_and_spans(client, board_runs):
    lines = read_jsonl(board_runs / "ner" / "eval_predictions.jsonl")
    for line, row in zip(lines, all_rows(client, "ner")):
        assert row["tokens"] == line["tokens"]
        for side, tags in (("gold_entities", line["reference"]), ("predicted_entities", line["prediction"])):
            marked = ["O"] * len(tags)
            for entity in row[side]:
                for at in range(entity["start"], entity["end"]):
                    marked[at] = entity["type"]
            assert marked == [tag.split("-")[-1] for tag in tags]
    source = {row["id"]: row for row in read_jsonl(read_json(board_runs / "qa" / "split.json")["source"])}
    for row in all_rows(client, "qa"):
        data = source[row["id"]]
        assert row["context"] == data["context"] and row["question"] == data["question"]
        assert [(s["start"], s["text"]) for s in row["gold_spans"]] == \
            list(zip(data["answers"]["answer_start"], data["answers"]["text"]))
        span = row["predicted_span"]
        assert row["context"][span["start"]:span["end"]] == span["text"] == row["prediction"]
    assert {row["id"] for row in all_rows(client, "ner", reference="LOC")} == \
        {line["id"] for line in lines if "B-LOC" in line["reference"]}


def test_bad_row_parameters_are_one_line_400s(client):
    message = assert_error(client.get("/api/runs/classify-a/rows", params={"limit": 501, "sort": "nope",
                                                                          "wrong": "maybe"}), 400, "bad_parameter")
    assert "limit=501" in message and "sort=nope" in message and "wrong=maybe" in message
    assert_error(client.get("/api/runs/classify-a/rows", params={"sort": "loss"}), 400, "bad_parameter")


# ---- compare --------------------------------------------------------------------------------------


def test_compare_counts_fixed_and_broken_rows_by_id(client, board_runs):
    a = {line["id"]: line for line in read_jsonl(board_runs / "classify-a" / "eval_predictions.jsonl")}
    b = {line["id"]: line for line in read_jsonl(board_runs / "classify-b" / "eval_predictions.jsonl")}
    assert a.keys() == b.keys()
    wrong = {run: {i for i, line in lines.items() if line["prediction"] != line["reference"]}
             for run, lines in (("a", a), ("b", b))}
    expected = {"fixed": wrong["a"] - wrong["b"], "broken": wrong["b"] - wrong["a"],
                "both_wrong": wrong["a"] & wrong["b"], "both_right": a.keys() - wrong["a"] - wrong["b"]}
    answer = get(client, "/api/compare", a="classify-a", b="classify-b")
    assert answer["same_rows"] is True and answer["why"] is None
    assert answer["counts"] == {which: len(ids) for which, ids in expected.items()}
    assert answer["metrics"]["eval_accuracy"] == [read_json(board_runs / run / "eval_results.json")["eval_accuracy"]
                                                  for run in ("classify-a", "classify-b")]
    for which, ids in expected.items():
        listed = get(client, "/api/compare/rows", a="classify-a", b="classify-b", which=which, limit=500)
        assert listed["total"] == len(ids) and {row["id"] for row in listed["rows"]} == ids
        for row in listed["rows"]:
            assert (row["a_prediction"], row["b_prediction"]) == (a[row["id"]]["prediction"],
                                                                  b[row["id"]]["prediction"])


def test_runs_on_other_splits_compare_metrics_only(client):
    answer = get(client, "/api/compare", a="classify-a", b="classify-other-split")
    assert answer["same_rows"] is False and answer["counts"] is None
    assert "different held-out rows" in answer["why"] and answer["metrics"]["eval_f1"][0] is not None
    assert_error(client.get("/api/compare/rows", params={"a": "classify-a", "b": "classify-other-split"}), 400,
                 "different_rows")


# ---- sweeps ---------------------------------------------------------------------------------------


def test_a_sweep_shows_its_trials_as_trials_jsonl_holds_them(client, board_runs):
    answer = get(client, "/api/sweeps/sweep")
    recorded = read_jsonl(board_runs / "sweep" / "trials.jsonl")
    assert [(t["number"], t["state"], t["value"], t["params"], t["duration_s"]) for t in answer["trials"]] == \
        [(t["number"], t["state"], t["value"], t["params"], t["train_runtime"]) for t in recorded]
    assert [t["run_id"] for t in answer["trials"]] == [f"sweep/{t['run']}" for t in recorded]
    assert answer["params"] == ["lr"] and answer["metric"] == "eval_f1" and answer["direction"] == "maximize"
    best = max((t for t in recorded if t["state"] == "complete"), key=lambda t: t["value"])
    assert answer["best"]["value"] == best["value"]
    for trial in answer["trials"]:
        assert get(client, f"/api/runs/{trial['run_id']}")["run"]["sweep"] == "sweep"
    assert_error(client.get("/api/sweeps/classify-a"), 404, "unknown_sweep")


# ---- errors, read-only, the key -------------------------------------------------------------------


def test_a_run_deleted_while_shown_answers_that_its_folder_is_gone(client, board_runs):
    doomed = board_runs / "doomed"
    shutil.copytree(board_runs / "classify-a", doomed)
    try:
        assert "doomed" in {run["id"] for run in get(client, "/api/runs")["runs"]}
        assert get(client, "/api/runs/doomed/rows")["total"] > 0
        results = (doomed / "eval_results.json").read_text()
        (doomed / "eval_results.json").write_text("[]")   # changed while the board runs: read again
        assert {b["id"]: b["why"] for b in get(client, "/api/runs")["broken"]}["doomed"] == \
            "eval_results.json does not hold a JSON object"
        (doomed / "eval_results.json").write_text(results)
        listed = {run["id"]: run for run in get(client, "/api/runs")["runs"]}
        assert listed["doomed"]["metrics"] == listed["classify-a"]["metrics"]
    finally:
        shutil.rmtree(doomed)
    for url in ("/api/runs/doomed", "/api/runs/doomed/rows"):
        assert "is gone" in assert_error(client.get(url), 404, "run_gone")
    assert "doomed" not in {run["id"] for run in get(client, "/api/runs")["runs"]}
    assert_error(client.get("/api/runs/never-there"), 404, "unknown_run")
    assert_error(client.get("/api/runs/a/%2E%2E/%2E%2E/etc"), 404, "unknown_run")


def test_an_unfinished_run_shows_its_curves_so_far_and_no_rows(client, board_runs):
    from ftune.folders import COMPLETE_MARKER

    unfinished = board_runs / "unfinished"
    shutil.copytree(board_runs / "classify-a", unfinished)
    try:   # as a run stopped after its checkpoint at step 2 leaves it
        (unfinished / "train_results.json").unlink()
        checkpoint = unfinished / "checkpoint-2"
        checkpoint.mkdir()
        (unfinished / "trainer_state.json").rename(checkpoint / "trainer_state.json")
        (checkpoint / COMPLETE_MARKER).write_text("")
        listed = {run["id"]: run for run in get(client, "/api/runs")["runs"]}
        assert listed["unfinished"]["status"] == "interrupted"
        run = get(client, "/api/runs/unfinished")
        history = read_json(checkpoint / "trainer_state.json")["log_history"]
        assert run["curves"]["train"]["loss"] == [[e["step"], e["loss"]] for e in history if "loss" in e] != []
        assert "did not finish" in assert_error(client.get("/api/runs/unfinished/rows"), 409, "run_unreadable")
    finally:
        shutil.rmtree(unfinished)


def test_an_empty_folder_says_how_to_make_a_run(tmp_path):
    from fastapi.testclient import TestClient

    from ftune.board.server import create_app

    with TestClient(create_app([tmp_path])) as empty:
        listing = get(empty, "/api/runs")
    assert listing["runs"] == [] and "--output-dir" in listing["how_to_start"]
    board = Board("--port", "0", cwd=tmp_path)   # the default runs/ need not exist yet
    try:
        listing = httpx.get(board.url + "/api/runs", timeout=60).json()
        assert listing["folders"] == ["runs"] and "--output-dir runs/first-run" in listing["how_to_start"]
    finally:
        assert board.stop() == 0


def test_the_board_writes_nothing_into_the_runs(client, board_runs):
    before = tree_digest(board_runs)
    listing = get(client, "/api/runs")
    for run in listing["runs"]:
        answer = get(client, f"/api/runs/{run['id']}")
        for picture in answer["pictures"]:
            client.get(picture["url"])
        get(client, f"/api/runs/{run['id']}/rows", wrong="true", sort="confidence", order="desc", q="a")
    get(client, "/api/compare", a="classify-a", b="classify-b")
    get(client, "/api/compare/rows", a="classify-a", b="classify-b", which="broken")
    get(client, "/api/sweeps/sweep")
    get(client, "/api/runs/classify-a/inputs")
    client.post("/api/runs/classify-a/try", json={"inputs": ["good dog"]})
    client.get("/api/runs/broken/rows")
    assert tree_digest(board_runs) == before


def test_the_api_key_guards_every_request(board_runs):
    from fastapi.testclient import TestClient

    from ftune.board.server import create_app

    with TestClient(create_app([board_runs], api_key="sesame")) as guarded:
        assert_error(guarded.get("/api/runs"), 401, "invalid_api_key")
        assert_error(guarded.get("/api/runs", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_error(guarded.get("/api/runs", headers={"Authorization": "sesame"}), 401, "invalid_api_key")
        assert guarded.get("/api/runs", headers={"Authorization": "Bearer sesame"}).status_code == 200
        assert guarded.get("/api/runs", params={"key": "sesame"}).status_code == 200   # sets the cookie
        assert guarded.get("/api/runs/classify-a").status_code == 200                  # ... which the next carries
        guarded.cookies.clear()
        assert_error(guarded.get("/api/runs/classify-a"), 401, "invalid_api_key")


# ---- try it ---------------------------------------------------------------------------------------


def assert_same_answers(served, expected, where: str = "") -> None:
    if isinstance(expected, float):
        assert abs(served - expected) <= SCORE_TOLERANCE, f"{where}: {served} != {expected}"
    elif isinstance(expected, dict):
        assert served.keys() == expected.keys(), (served, expected)
        for key in expected:
            assert_same_answers(served[key], expected[key], f"{where}.{key}")
    else:
        assert served == expected, f"{where}: {served!r} != {expected!r}"


def test_try_answers_as_ftune_predict(client, board_runs):
    texts = ["good happy dog", "terrible sad city model", "paper data"]
    result = invoke("predict", board_runs / "classify-b", *[a for t in texts for a in ("--text", t)])
    assert result.exit_code == 0, result
    expected = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    response = client.post("/api/runs/classify-b/try", json={"inputs": texts})
    assert response.status_code == 200, response.text
    for served, wanted in zip(response.json()["predictions"], expected, strict=True):
        assert_same_answers(served, wanted)
    question, context = "what is the capital of france?", "the capital of france is paris. a dog runs."
    result = invoke("predict", board_runs / "qa", "--question", question, "--context", context)
    assert result.exit_code == 0, result
    response = client.post("/api/runs/qa/try", json={"inputs": [{"question": question, "context": context}]})
    assert_same_answers(response.json()["predictions"][0], json.loads(result.stdout))
    assert get(client, "/api/runs/classify-b/inputs")["input_fields"] == ["text"]
    assert_error(client.post("/api/runs/classify-b/try", json={"inputs": []}), 422, "missing_inputs")


def test_a_run_without_its_weights_says_it_cannot_be_tried_and_the_board_stays_up(board_runs, tmp_path):
    from fastapi.testclient import TestClient

    from ftune.board.server import create_app

    shutil.copytree(board_runs / "classify-a", tmp_path / "runs" / "no-weights")
    (tmp_path / "runs" / "no-weights" / "model.safetensors").unlink()   # as a sweep trial that kept no weights
    with TestClient(create_app([tmp_path / "runs"])) as board:
        for response in (board.get("/api/runs/no-weights/inputs"),
                         board.post("/api/runs/no-weights/try", json={"inputs": ["good dog"]})):
            assert "model.safetensors" in assert_error(response, 409, "cannot_try")
        assert board.get("/api/runs/no-weights").status_code == 200   # its page still shows what it recorded


@pytest.mark.parametrize("damage", ['{"id": 3, "prediction": ', '[1, 2]'])
def test_a_damaged_predictions_line_is_named_in_one_line(board_runs, tmp_path, damage):
    from fastapi.testclient import TestClient

    from ftune.board.server import create_app

    run = shutil.copytree(board_runs / "classify-a", tmp_path / "runs" / "damaged")
    lines = (run / "eval_predictions.jsonl").read_text().splitlines()
    lines.insert(4, damage)
    (run / "eval_predictions.jsonl").write_text("\n".join(lines) + "\n")
    with TestClient(create_app([tmp_path / "runs"])) as board:
        message = assert_error(board.get("/api/runs/damaged/rows"), 409, "bad_predictions")
        assert "eval_predictions.jsonl line 5 is not a JSON object" in message


# ---- the command ----------------------------------------------------------------------------------


class Board:
    """`ftune board ARGS` in a subprocess; `url` from its ready line."""

    def __init__(self, *args, cwd: Path = ROOT):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, "-m", "ftune", "board", *map(str, args)],
                                        stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=str(cwd))
        self.ready_line = self.process.stdout.readline()
        found = READY.search(self.ready_line)
        self.stderr.seek(0)
        assert found, f"no ready line: {self.ready_line!r}; stderr: {self.stderr.read()}"
        self.url = found.group(1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def test_the_command_serves_on_a_free_port_and_refuses_a_taken_one_in_one_line(board_runs):
    board = Board(board_runs, "--port", "0")
    try:
        assert board.ready_line.startswith(f"ftune board: the runs under {board_runs} at http://127.0.0.1:")
        listing = httpx.get(board.url + "/api/runs", timeout=60).json()
        assert "classify-a" in {run["id"] for run in listing["runs"]}
        port = board.url.rsplit(":", 1)[1]
        assert_usage_error(invoke("board", board_runs, "--port", port), f"127.0.0.1:{port}", "--port 0")
    finally:
        assert board.stop() == 0
    assert_usage_error(invoke("board", board_runs, "--host", "0.0.0.0"), "--api-key")
    assert_usage_error(invoke("board", board_runs / "missing"), "is not a folder")


# ---- 100k rows ------------------------------------------------------------------------------------


def test_a_hundred_thousand_rows_page_from_memory(board_runs, tmp_path):
    """A copy of a classify run with 100k held-out rows (its data, split.json and eval_predictions.jsonl made
    here); the first page's time (which reads and joins every row) and the next page's are printed."""
    from fastapi.testclient import TestClient

    from ftune.board.server import create_app
    from ftune.data.split import fingerprint
    from ftune.rundir import write_jsonl as write_lines
    from ftune.tasks import get_task

    n = 100_000
    run = tmp_path / "runs" / "large"
    shutil.copytree(board_runs / "classify-a", run)
    rows = [{"id": f"r{i}", "text": f"row {i} " + ("good " if i % 3 else "bad ") * (i % 7 + 1),
             "label": LABELS[i % 3]} for i in range(n)]
    data = write_jsonl(tmp_path / "large.jsonl", rows)
    split = read_json(run / "split.json")
    task = get_task("classify")
    held_out = task.load_source(None, str(data), None)["train"]
    split.update(source=str(data), source_path=str(data), indices=list(range(n)), rows=n,
                 fingerprint=fingerprint(held_out))
    (run / "split.json").write_text(json.dumps(split))
    lines = [{"id": row["id"], "prediction": LABELS[(i * 2) % 3], "reference": row["label"], "score": (i % 1000) / 1000}
             for i, row in enumerate(rows)]
    write_lines(run / "eval_predictions.jsonl", lines)

    with TestClient(create_app([tmp_path / "runs"])) as large:
        started = time.perf_counter()
        first = get(large, "/api/runs/large/rows", wrong="true", sort="confidence", order="desc")
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        get(large, "/api/runs/large/rows", wrong="true", sort="confidence", order="desc", offset=50)
        next_s = time.perf_counter() - started
    print(f"\n100k held-out rows: first page {first_s:.2f} s (reads and joins every row), next page {next_s:.3f} s")
    assert first["total"] == sum(1 for line in lines if line["prediction"] != line["reference"])
    assert first["rows"][0]["text"] == {"text": rows[int(first["rows"][0]["id"][1:])]["text"]}
    assert [row["score"] for row in first["rows"]] == sorted((row["score"] for row in first["rows"]), reverse=True)


# ---- dpo and lm -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generative_runs(tmp_path_factory, tiny_gpt2, tiny_t5):
    """A dpo run and an lm run on a tiny GPT-2, a summarize run on a tiny T5, in a board folder of their own."""
    from tests.test_dpo import repeat_pairs
    from tests.test_summarize import summary_rows

    root = tmp_path_factory.mktemp("board-generative") / "runs"
    data = tmp_path_factory.mktemp("board-generative-data")
    pairs = write_jsonl(data / "pairs.jsonl", repeat_pairs(40))
    common = ["--model", tiny_gpt2, "--data", pairs, "--max-steps", "2", "--batch-size", "8", "--max-length", "32",
              "--precision", "fp32"]
    for task, extra in (("dpo", []), ("lm", ["--text-column", "prompt"])):
        result = invoke(task, *common, *extra, "--output-dir", root / task)
        assert result.exit_code == 0, result
    documents = write_jsonl(data / "documents.jsonl", summary_rows(40))
    result = invoke("summarize", "--model", tiny_t5, "--data", documents, "--max-steps", "1", "--batch-size", "8",
                    "--max-length", "16", "--max-target-length", "4", "--val-fraction", "0.2", "--precision", "fp32",
                    "--output-dir", root / "summarize")
    assert result.exit_code == 0, result
    return root


@pytest.fixture(scope="module")
def generative_client(generative_runs):
    from fastapi.testclient import TestClient

    from ftune.board.server import create_app

    with TestClient(create_app([generative_runs])) as test_client:
        yield test_client


def test_dpo_rows_are_wrong_where_the_policy_prefers_the_rejected_answer(generative_client, generative_runs):
    lines = read_jsonl(generative_runs / "dpo" / "eval_predictions.jsonl")
    rows = all_rows(generative_client, "dpo", sort="confidence", order="desc")
    assert [abs(line["margin"]) for line in sorted(lines, key=lambda l: -abs(l["margin"]))] == \
        [row["score"] for row in rows]
    by_id = {line["id"]: line for line in lines}
    for row in rows:
        line = by_id[row["id"]]
        assert row["wrong"] == (line["prediction"] != "chosen") and row["margin"] == line["margin"]
        assert row["loss"] == line["loss"] and set(row["text"]) == {"prompt", "chosen", "rejected"}


def test_lm_rows_list_the_highest_loss_first(generative_client, generative_runs):
    lines = read_jsonl(generative_runs / "lm" / "eval_predictions.jsonl")
    rows = all_rows(generative_client, "lm", sort="loss", order="desc")
    assert [row["loss"] for row in rows] == sorted((line["prediction"] for line in lines), reverse=True)
    losses = sorted(line["prediction"] for line in lines)
    middle = len(losses) // 2
    median = losses[middle] if len(losses) % 2 else (losses[middle - 1] + losses[middle]) / 2
    assert {row["id"] for row in rows if row["wrong"]} == {line["id"] for line in lines if line["prediction"] > median}


def test_an_lm_run_tries_as_ftune_generate(generative_client, generative_runs, tmp_path):
    out = tmp_path / "generated.jsonl"
    result = invoke("generate", "--model", generative_runs / "lm", "--prompt", "repeat cat:", "--max-new-tokens", "5",
                    "--no-stream", "--output", out)
    assert result.exit_code == 0, result
    response = generative_client.post("/api/runs/lm/try", json={"prompt": "repeat cat:", "max_tokens": 5})
    assert response.status_code == 200, response.text
    assert response.json()["text"] == read_jsonl(out)[0]["generation"]


def test_summarize_rows_carry_their_rouge_l_and_the_worst_half_is_wrong(generative_client, generative_runs):
    from rouge_score import rouge_scorer

    run = generative_runs / "summarize"
    # The tiny model's outputs are near empty: the lines are given outputs of every quality here (a copy of the
    # reference, half of it, unrelated words), as a run could have written them.
    lines = read_jsonl(run / "eval_predictions.jsonl")
    for i, line in enumerate(lines):
        words = line["reference"].split()
        line["prediction"] = [line["reference"], " ".join(words[:len(words) // 2]), "paris london"][i % 3]
    (run / "eval_predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = {line["id"]: 100 * scorer.score(line["reference"], line["prediction"])["rougeL"].fmeasure
                for line in lines}
    rows = all_rows(generative_client, "summarize", sort="score", order="asc")
    assert [row["id"] for row in rows] == sorted(expected, key=lambda i: expected[i])   # stable: ties in file order
    values = sorted(expected.values())
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    split = read_json(run / "split.json")
    documents = read_jsonl(split["source"])
    for row in rows:
        assert row["row_score"]["name"] == "ROUGE-L" and abs(row["row_score"]["value"] - expected[row["id"]]) < 1e-9
        assert row["wrong"] == (expected[row["id"]] < median)
        assert row["output"] == row["prediction"] and row["source"] == documents[int(row["id"][1:])]["document"]
