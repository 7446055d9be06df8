"""Bad input gets one `error:` line, exit code 2, no traceback — and loses nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.test_classify import sentiment_rows, write_jsonl


def assert_usage_error(result, *fragments: str):
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", sentiment_rows(40))


def classify(ftune, tiny_bert, data, tmp_path, *extra):
    return ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run",
                 "--max-steps", "2", "--batch-size", "8", *extra)


def test_missing_data_file(ftune, tiny_bert, tmp_path):
    result = classify(ftune, tiny_bert, tmp_path / "nope.csv", tmp_path)
    assert_usage_error(result, "does not exist", "nope.csv")
    assert not (tmp_path / "run").exists()


def test_no_data_given(ftune, tiny_bert):
    assert_usage_error(ftune("classify", "--model", tiny_bert), "--data")


def test_unknown_column_lists_the_columns(ftune, tiny_bert, data, tmp_path):
    line = assert_usage_error(classify(ftune, tiny_bert, data, tmp_path, "--label-column", "sentiment"),
                              "'sentiment'", "--label-column")
    assert "id, text, label" in line


def test_undetectable_columns(ftune, tiny_bert, tmp_path):
    rows = [{"body": f"text {i}", "y": i % 2} for i in range(20)]
    path = write_jsonl(tmp_path / "odd.jsonl", rows)
    assert_usage_error(classify(ftune, tiny_bert, path, tmp_path), "--text-column", "body, y")


def test_empty_data(ftune, tiny_bert, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n")
    assert_usage_error(classify(ftune, tiny_bert, path, tmp_path), "no rows")


def test_one_class_only(ftune, tiny_bert, tmp_path):
    rows = [{"text": f"good dog {i}", "label": "positive"} for i in range(20)]
    path = write_jsonl(tmp_path / "one.jsonl", rows)
    assert_usage_error(classify(ftune, tiny_bert, path, tmp_path), "one class only", "positive")


def test_eval_labels_unseen_in_training(ftune, tiny_bert, tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", sentiment_rows(20))
    write_jsonl(folder / "test.jsonl", sentiment_rows(9, labels=("negative", "positive", "neutral")))
    assert_usage_error(classify(ftune, tiny_bert, folder, tmp_path), "never seen in training", "neutral")


def test_rows_without_values(ftune, tiny_bert, tmp_path):
    rows = sentiment_rows(20)
    rows[3]["text"] = ""
    rows[7]["label"] = None
    path = write_jsonl(tmp_path / "holes.jsonl", rows)
    assert_usage_error(classify(ftune, tiny_bert, path, tmp_path), "no value in column")


def test_unreadable_rows(ftune, tiny_bert, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"text": "good", "label": "positive"}) + "\n{this is not json\n")
    assert_usage_error(classify(ftune, tiny_bert, path, tmp_path), "could not read")


def test_uncached_hub_model_fails_fast_offline(ftune, data, tmp_path):
    started = time.time()
    result = ftune("classify", "--model", "some-org/not-a-cached-model", "--data", data, "--output-dir",
                   tmp_path / "run")
    assert_usage_error(result, "not in the local cache", "local model folder")
    assert time.time() - started < 30  # generous: it must not sit in network retries
    assert not (tmp_path / "run").exists()


def test_uncached_hub_dataset_fails_fast_offline(ftune, tiny_bert, tmp_path):
    result = ftune("classify", "--model", tiny_bert, "--data", "some-org/not-a-cached-dataset",
                   "--output-dir", tmp_path / "run")
    assert_usage_error(result, "not in the local cache", "--data")


def test_folder_that_is_not_a_run(ftune, tiny_bert, data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert_usage_error(classify(ftune, tiny_bert, data, tmp_path), "not empty")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_folder_in_use_by_a_live_process(ftune, tiny_bert, data, tmp_path):
    import os
    import socket
    import subprocess

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "ftune.yaml").write_text("model: x\n")
        (run / ".ftune.lock").write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        assert_usage_error(classify(ftune, tiny_bert, data, tmp_path), "in use", str(sleeper.pid))
    finally:
        sleeper.kill()
    assert os.path.exists(tmp_path / "run" / "ftune.yaml")


def test_eval_of_a_missing_run(ftune, tmp_path):
    assert_usage_error(ftune("eval", tmp_path / "nothing"), "does not exist")


def test_invalid_values_are_all_reported(ftune, tiny_bert, data, tmp_path):
    line = assert_usage_error(classify(ftune, tiny_bert, data, tmp_path, "--val-fraction", "1.5",
                                       "--precision", "fp8", "--set", "lora_rank=4"),
                              "--val-fraction", "--precision", "lora_rank")
    assert "lora_r" in line  # a close match is suggested


def test_debug_shows_the_traceback(ftune, tiny_bert, tmp_path):
    with pytest.raises(Exception) as info:
        ftune("classify", "--model", tiny_bert, "--data", tmp_path / "nope.csv", "--debug")
    assert "does not exist" in str(info.value)
