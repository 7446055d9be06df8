"""`--report-to`: TensorBoard gets the train loss and the held-out metrics, in event files inside the run (also when
--overwrite trains in a staging folder); a tracker that is not installed, or a misspelt one, is one line and changes
nothing; each tracker's files are pointed into the run only while it trains."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import yaml

from tests.conftest import invoke, read_json
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_safety import tree_digest

ARGS = ["--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--logging-steps", "2",
        "--val-fraction", "0.25"]


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of `folder`, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def logged(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["step"], pytest.approx(e[key], rel=1e-6)) for e in history if key in e]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(64))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, data):
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ
    out = tmp_path_factory.mktemp("runs") / "tracked"
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", out, "--report-to",
                    "tensorboard", *ARGS)
    assert result.exit_code == 0, result
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set only while the run trained
    return out


def test_tensorboard_holds_the_train_loss_and_the_held_out_metrics(run):
    history = read_json(run / "trainer_state.json")["log_history"]
    found = scalars(run / "logs" / "tensorboard")
    assert found["train/loss"] == logged(history, "loss")
    for metric in ("loss", "f1", "accuracy", "precision", "recall"):
        assert found[f"eval/{metric}"] == logged(history, f"eval_{metric}")
    assert len(found["eval/f1"]) == 2  # one evaluation per epoch
    assert not (run / "runs").exists()  # not in the Trainer's default folder
    assert yaml.safe_load((run / "ftune.yaml").read_text())["report_to"] == ["tensorboard"]
    assert "under `logs/`: `tensorboard --logdir logs`" in (run / "README.md").read_text()


def test_overwrite_swaps_in_the_logs_of_the_new_run(run, tiny_bert, data, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    old = scalars(target / "logs" / "tensorboard")
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", target, "--report-to",
                    "tensorboard", *ARGS, "--seed", "7", "--overwrite")
    assert result.exit_code == 0, result
    assert not list(tmp_path.glob(".run.ftune-*"))
    events = list((target / "logs" / "tensorboard").iterdir())
    assert len(events) == 1, events  # the old run's event file went with the old run
    new = scalars(target / "logs" / "tensorboard")
    assert new["train/loss"] == logged(read_json(target / "trainer_state.json")["log_history"], "loss")
    assert new["train/loss"] != old["train/loss"]


@pytest.fixture
def without_mlflow(monkeypatch):
    """mlflow as if not installed, wherever the tests run."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "mlflow" else find_spec(name, *args))


def test_a_tracker_that_is_not_installed_is_one_line_and_changes_nothing(run, tiny_bert, data, tmp_path,
                                                                         without_mlflow):
    fresh = tmp_path / "fresh"
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", fresh, "--report-to",
                    "tensorboard,mlflow", *ARGS)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        'error: --report-to mlflow: mlflow is not installed; run pip install "ftune[mlflow]" or leave it out of '
        '--report-to']
    assert not fresh.exists()

    target = tmp_path / "finished"
    shutil.copytree(run, target)
    before = tree_digest(target)
    refused = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", target, "--report-to",
                     "mlflow", *ARGS, "--overwrite")
    assert refused.exit_code == 2 and "ftune[mlflow]" in refused.stderr
    assert tree_digest(target) == before and not list(tmp_path.glob(".finished.ftune-*"))


@pytest.mark.parametrize("names, message", [
    ("tensorbord", "unknown tracker 'tensorbord' (did you mean 'tensorboard'?); choose from none, tensorboard, "
                   "trackio, mlflow, wandb"),
    ("none,wandb", "'none' cannot be combined with a tracker"),
])
def test_tracker_names_are_checked(tiny_bert, data, tmp_path, names, message):
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "run",
                    "--report-to", names)
    assert result.exit_code == 2 and message in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_each_tracker_writes_into_the_run_only_while_it_trains(tmp_path, monkeypatch):
    from ftune.tracking import logs_in, tracker_arguments

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    before = dict(os.environ)
    logs = tmp_path / "logs"
    with logs_in(logs, ["tensorboard", "trackio", "mlflow", "wandb"]):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(logs / "tensorboard")
        assert os.environ["TRACKIO_DIR"] == str(logs / "trackio")
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{(logs / 'mlflow').resolve() / 'mlflow.db'}"
        assert os.environ["WANDB_DIR"] == str(logs / "wandb")
        assert os.environ["WANDB_PROJECT"] == "mine"  # the user's own choice wins
    assert dict(os.environ) == before
    assert sorted(p.name for p in logs.iterdir()) == ["mlflow", "tensorboard", "trackio", "wandb"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    with logs_in(logs, ["mlflow"]):
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"  # a server stays the server

    assert tracker_arguments(None, "r") == tracker_arguments(["none"], "r") == {"report_to": "none"}
    assert tracker_arguments(["tensorboard"], "r") == {"report_to": ["tensorboard"], "run_name": "r"}
    assert tracker_arguments(["trackio"], "r")["project"] == "ftune"
