"""`ftune runs [DIR]` and `ftune runs compare`: every run found with the figures its files hold, its status
(finished, interrupted, in use, replacing; old runs without the marker too), sorting, JSON, and comparisons that
show exactly the config keys that differ."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from ftune.folders import FolderLock, staging_path
from tests.conftest import invoke, read_json
from tests.test_classify import sentiment_rows, write_jsonl

ARGS = ["--max-steps", "4", "--eval-steps", "2", "--batch-size", "8", "--max-length", "32", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_bert):
    """runs/a and runs/b differ only in --lr; runs/sweep/lora is a LoRA run one level down."""
    base = tmp_path_factory.mktemp("runs")
    data = write_jsonl(base / "sentiment.jsonl", sentiment_rows(48))
    folder = base / "runs"
    for name, flags in [("a", ["--lr", "3e-3"]), ("b", ["--lr", "1e-2"]),
                        ("sweep/lora", ["--lr", "3e-3", "--lora"])]:
        result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", folder / name, *ARGS,
                        *flags, "--quiet")
        assert result.exit_code == 0, result
    return folder


def listing(*args) -> list[dict]:
    result = invoke("runs", *args, "--json")
    assert result.exit_code == 0, result
    return json.loads(result.stdout)


def test_every_run_is_listed_with_the_figures_of_its_files(root):
    runs = {r["name"]: r for r in listing(root)}
    assert set(runs) == {"a", "b", "sweep/lora"}
    for name, run in runs.items():
        folder = root / name
        results = read_json(folder / "eval_results.json")
        assert run["task"] == "classify" and run["status"] == "finished"
        assert run["main_metric"] == "eval_f1" and run["value"] == results["eval_f1"]
        assert run["metrics"] == results
        assert run["held_out_rows"] == read_json(folder / "split.json")["rows"] == 12
        assert run["train_seconds"] == read_json(folder / "train_results.json")["wall_seconds"]
        saved = yaml.safe_load((folder / "ftune.yaml").read_text())
        assert run["model"] == saved["model"] and run["data"] == saved["data"]
        assert run["method"] == ("LoRA" if name == "sweep/lora" else "full")
    created = [r["created"] for r in listing(root)]
    assert created == sorted(created)  # oldest first

    table = invoke("runs", root)
    assert table.exit_code == 0, table
    lines = table.stdout.splitlines()
    assert lines[0] == f"3 runs under {root}, oldest first"
    assert lines[1].split() == ["run", "task", "model", "method", "data", "held-out", "metric", "value", "train",
                                "time", "created", "status"]
    row = next(line for line in lines if line.startswith("sweep/lora "))
    assert row.split()[:8] == ["sweep/lora", "classify", "tiny-bert", "LoRA", "sentiment.jsonl", "12", "f1",
                               f"{runs['sweep/lora']['value']:.4f}"]
    assert row.endswith("finished")


def test_sort_by_a_metric_best_first(root):
    by_loss = listing(root, "--sort", "loss")
    losses = [r["metrics"]["eval_loss"] for r in by_loss]
    assert losses == sorted(losses)  # lower is better for a loss
    by_accuracy = listing(root, "--sort", "eval_accuracy")
    accuracies = [r["metrics"]["eval_accuracy"] for r in by_accuracy]
    assert accuracies == sorted(accuracies, reverse=True)
    table = invoke("runs", root, "--sort", "loss")
    assert table.stdout.splitlines()[0] == f"3 runs under {root}, best loss first"
    unknown = invoke("runs", root, "--sort", "bleu")
    assert unknown.exit_code == 2 and "eval_bleu" in unknown.stderr and "eval_f1" in unknown.stderr


def test_status_of_interrupted_old_in_use_and_replaced_runs(root, tmp_path):
    folder = tmp_path / "mixed"
    names = ("interrupted", "old", "busy", "replaced", "stopped")
    for name in names:
        shutil.copytree(root / "a", folder / name)
    for name in ("interrupted", "busy"):  # no train_results.json: not finished
        (folder / name / "train_results.json").unlink()
        (folder / name / "eval_results.json").unlink()
    (folder / "interrupted" / "best-model").mkdir()
    (folder / "interrupted" / "best-model" / "best.json").write_text(json.dumps({"step": 2, "metric": 0.25}))
    (folder / "old" / ".ftune-run").unlink()  # written before ftune marked its runs: still listed
    for name in ("replaced", "stopped"):  # an --overwrite training beside them
        shutil.copytree(root / "b", staging_path(folder / name))
    locks = [FolderLock(folder / "busy"), FolderLock(staging_path(folder / "replaced"))]
    for lock in locks:
        lock.acquire()
    try:
        runs = {r["name"]: r for r in listing(folder)}
    finally:
        for lock in locks:
            lock.release()
    assert set(runs) == set(names)  # staging folders are not runs of their own
    assert {name: r["status"] for name, r in runs.items()} == {
        "interrupted": "interrupted", "old": "finished", "busy": "in use", "replaced": "replacing",
        "stopped": "finished, replacement stopped"}
    assert runs["interrupted"]["value"] == 0.25  # the best evaluation so far
    assert runs["busy"]["value"] is None and runs["busy"]["metrics"] == {}


def test_compare_shows_metrics_side_by_side_and_the_config_keys_that_differ(root):
    result = invoke("runs", "compare", root / "a", root / "b", "--json")
    assert result.exit_code == 0, result
    comparison = json.loads(result.stdout)
    a, b = (read_json(root / n / "eval_results.json") for n in ("a", "b"))
    for key in a:
        assert comparison["metrics"][key] == [a[key], b[key]]
    assert comparison["metrics"]["train_loss"] == [read_json(root / n / "train_results.json")["train_loss"]
                                                   for n in ("a", "b")]
    assert comparison["config_differences"] == {"lr": [3e-3, 1e-2]}

    text = invoke("runs", "compare", root / "a", root / "b")
    assert text.exit_code == 0, text
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["metric", str(root / "a"), str(root / "b")]
    assert next(line for line in lines if line.startswith("eval_f1 ")).split()[1:] == [f"{a['eval_f1']:.4f}",
                                                                                       f"{b['eval_f1']:.4f}"]
    assert "config keys that differ (ftune.yaml)" in lines
    assert [line.split() for line in lines if line.startswith("lr ")] == [["lr", "0.003", "0.01"]]

    lora = json.loads(invoke("runs", "compare", root / "a", root / "sweep" / "lora", "--json").stdout)
    assert lora["config_differences"]["lora"] == [False, True]
    assert "lr" not in lora["config_differences"] and "output_dir" not in lora["config_differences"]


def test_bad_runs_arguments_are_one_line(root, tmp_path, ftune):
    cases = [("runs", tmp_path / "missing"), ("runs", "compare", root / "a"),
             ("runs", "compare", root / "a", tmp_path), ("runs", root / "a", root / "b"),
             ("runs", "compare", root / "a", root / "b", "--sort", "f1")]
    for args in cases:
        result = ftune(*args)
        assert result.exit_code == 2, (args, result)
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    (tmp_path / "empty").mkdir()
    assert ftune("runs", tmp_path / "empty").stdout == f"no ftune runs under {tmp_path / 'empty'}\n"
    assert json.loads(ftune("runs", tmp_path / "empty", "--json").stdout) == []
