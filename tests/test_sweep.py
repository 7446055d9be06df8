"""`ftune sweep` end to end on a tiny BERT: every trial a complete run on one recorded split, the study and the files
agreeing on the best, best.yaml retraining to its figure, kill -9 and --resume, pruning, --jobs, and several processes
on one shared study."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from ftune.folders import last_complete_checkpoint
from tests.conftest import ROOT, invoke, read_json, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl

KILL = ROOT / "tests" / "helpers" / "kill_during_sweep.py"
# Tiny trials: 6 steps, an evaluation (and a checkpoint) every 2, 12 held-out rows; in fp32 on every CPU (auto would
# train in bf16 on CPUs with AMX, and the figures compared here would be other figures there).
TRAIN = ["--max-steps", "6", "--eval-steps", "2", "--batch-size", "8", "--max-length", "16", "--val-fraction", "0.25",
         "--logging-steps", "1", "--precision", "fp32"]
SPACE = ["--param", "lr=1e-3..3e-2:log", "--param", "warmup=0.0..0.2", "--param", "batch-size=4,8"]


def sweep_command(model, data, out, *extra) -> list:
    return ["sweep", "classify", "--model", model, "--data", data, "--output-dir", out, *TRAIN, *SPACE, *extra]


def load_study(sweep: Path, name: str | None = None):
    return optuna.load_study(study_name=name or sweep.resolve().name, storage=f"sqlite:///{sweep / 'study.db'}")


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(48))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_bert, data):
    out = tmp_path_factory.mktemp("sweeps") / "main"
    result = invoke(*sweep_command(tiny_bert, data, out, "--trials", "3", "--seed", "42"))
    assert result.exit_code == 0, result
    return out, result


def test_every_trial_is_a_complete_run_with_its_parameters(sweep):
    out, _ = sweep
    assert {"split.json", "study.db", "trials.jsonl", "best.yaml", "sweep.png", "sweep.yaml", "trial-000", "trial-001",
            "trial-002", "logs"} <= {p.name for p in out.iterdir()}
    rows = read_jsonl(out / "trials.jsonl")
    assert [r["number"] for r in rows] == [0, 1, 2] and {r["state"] for r in rows} == {"complete"}
    for row in rows:
        params, run = row["params"], out / row["run"]
        assert set(params) == {"lr", "warmup", "batch-size"}  # keyed by flag name
        assert 1e-3 <= params["lr"] <= 3e-2 and 0.0 <= params["warmup"] <= 0.2 and params["batch-size"] in (4, 8)
        import yaml

        config = yaml.safe_load((run / "ftune.yaml").read_text())
        assert (config["lr"], config["warmup"], config["batch_size"]) == (params["lr"], params["warmup"],
                                                                          params["batch-size"])
        assert config["output_dir"] == str(run) and config["run"]["task"] == "classify"
        assert row["value"] == read_json(run / "eval_results.json")["eval_f1"]
        assert row["train_runtime"] == read_json(run / "train_results.json")["train_runtime"]
        assert (run / "README.md").is_file() and (run / "eval_predictions.jsonl").is_file()
        # Each evaluation (every 2 of 6 steps) was reported to the study.
        assert load_study(out).trials[row["number"]].intermediate_values.keys() == {1, 2, 3}
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_trial_scores_the_one_recorded_split(sweep):
    out, _ = sweep
    recorded = read_json(out / "split.json")
    assert recorded["rows"] == 12 and recorded["method"] == "fraction"
    ids = None
    for trial in sorted(out.glob("trial-*")):
        split = read_json(trial / "split.json")
        assert (split["fingerprint"], split["indices"]) == (recorded["fingerprint"], recorded["indices"])
        trial_ids = [p["id"] for p in read_jsonl(trial / "eval_predictions.jsonl")]
        assert ids is None or trial_ids == ids
        ids = trial_ids


def test_study_files_and_table_agree_on_the_best(sweep):
    out, result = sweep
    rows = read_jsonl(out / "trials.jsonl")
    study = load_study(out)
    best = max(rows, key=lambda r: (r["value"], -r["number"]))
    assert study.best_trial.number == best["number"] and study.best_trial.value == best["value"]
    assert {t.number: t.value for t in study.trials} == {r["number"]: r["value"] for r in rows}
    marked = [line for line in result.stdout.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1] == str(best["number"])
    assert f"trial {best['number']}" in (out / "best.yaml").read_text().splitlines()[1]
    # --keep best: the other trials keep everything but their weights.
    for row in rows:
        run = out / row["run"]
        assert row["weights"] == (row["number"] == best["number"]) == (run / "model.safetensors").is_file()
        assert (run / "config.json").is_file() and (run / "eval_results.json").is_file()


def test_best_yaml_retrains_to_the_best_trials_figure(sweep, ftune, tmp_path):
    out, _ = sweep
    best = load_study(out).best_trial
    run = out / f"trial-{best.number:03d}"
    retrained = tmp_path / "retrained"
    result = ftune("classify", "--config", out / "best.yaml", "--output-dir", retrained)
    assert result.exit_code == 0, result
    assert read_json(retrained / "eval_results.json") == read_json(run / "eval_results.json")
    assert read_json(retrained / "split.json") == read_json(out / "split.json")
    assert (retrained / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()


def test_the_best_trial_evaluates_and_predicts_like_any_run(sweep, ftune, tmp_path):
    out, _ = sweep
    run = out / f"trial-{load_study(out).best_trial.number:03d}"
    again = ftune("eval", run, "--output-dir", tmp_path / "eval")
    assert again.exit_code == 0, again
    trained = read_json(run / "eval_results.json")
    rescored = read_json(tmp_path / "eval" / "eval_results.json")
    assert {k: rescored[k] for k in ("eval_f1", "eval_accuracy")} == {k: trained[k] for k in ("eval_f1",
                                                                                            "eval_accuracy")}
    first = read_jsonl(run / "eval_predictions.jsonl")[0]
    text = next(r["text"] for r in sentiment_rows(48) if r["id"] == first["id"])
    predicted = ftune("predict", run, "--text", text)
    assert predicted.exit_code == 0, predicted
    assert json.loads(predicted.stdout.splitlines()[0])["label"] == first["prediction"]


def test_kill_9_then_resume_keeps_finished_trials_and_reaches_the_total(sweep, tiny_bert, data, tmp_path):
    out = tmp_path / "sweep"
    # The module's sweep with every trial's weights kept, and a checkpoint at each evaluation to be killed after.
    command = sweep_command(tiny_bert, data, out, "--trials", "3", "--seed", "42", "--keep", "all",
                            "--checkpoint-minutes", "0")
    killed = subprocess.run([sys.executable, str(KILL), "1", *map(str, command)], capture_output=True, text=True,
                            cwd=ROOT, timeout=900)
    assert killed.returncode == -9, killed.stderr[-3000:]
    interrupted = out / "trial-001"
    # The trial dies by the kernel's parent-death signal, or, when it wakes first to its answers' end, by the error
    # that raises (releasing its folder): either way it stops mid-run.
    trial_pid = int(re.search(r"trial process (\d+)", killed.stderr).group(1))
    while _alive(trial_pid):
        os.sched_yield()
    assert not (interrupted / "train_results.json").exists()  # it died with the sweep, not after training on
    assert last_complete_checkpoint(interrupted) is not None  # killed mid-run, after a checkpoint
    assert [t.state.name for t in load_study(out).trials] == ["COMPLETE", "RUNNING"]
    finished = tree_digest(out / "trial-000")

    refused = invoke(*command)
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    resumed = invoke(*command, "--resume")
    assert resumed.exit_code == 0, resumed
    assert "trial 1 was interrupted: marked failed" in resumed.stdout
    assert tree_digest(out / "trial-000") == finished
    rows = read_jsonl(out / "trials.jsonl")
    assert [(r["number"], r["state"]) for r in rows] == [(0, "complete"), (1, "failed"), (2, "complete"),
                                                         (3, "complete")]
    assert rows[1]["error"] == "interrupted"
    # The same search proposes the same parameters: trials 0-2 here are those of the module's sweep.
    first = {r["number"]: r["params"] for r in read_jsonl(sweep[0] / "trials.jsonl")}
    assert all(r["params"] == first[r["number"]] for r in rows if r["number"] in first)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").is_dir() and "zombie" not in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


@pytest.mark.numerics
def test_pruning_stops_a_hopeless_trial_but_never_a_finished_one(tiny_bert, data, tmp_path, ftune):
    out = tmp_path / "sweep"
    # A grid runs its combinations in the order listed: a sensible learning rate for 6 steps and for 2, then a
    # hopeless one for 6 steps and for 2. From the third trial on, the median rule compares each evaluation with the
    # finished trials' at the same evaluation (one every 2 steps).
    # Hopeless by construction, not by the rounding of one CPU: Adam's first steps move every weight by about the
    # learning rate whatever its gradient, so at lr 100 the two logits of a held-out row lie hundreds apart and each
    # wrong row costs hundreds: the loss at the first evaluation is in the thousands, the sensible trials' ~0.7 (and
    # every value stays far below float overflow, so the run goes on). At lr 0.5 that loss was anything from 1.8 to
    # 17 with the initial weights, and close to the sensible trials' with some vocabularies: a figure of chance.
    result = ftune("sweep", "classify", "--model", tiny_bert, "--data", data, "--output-dir", out, *TRAIN,
                   "--param", "lr=1e-2,100", "--param", "max-steps=6,2", "--sampler", "grid", "--metric", "loss")
    assert result.exit_code == 0, result
    study = load_study(out)
    assert [(t.params["lr"], t.params["max-steps"]) for t in study.trials] == [(1e-2, 6), (1e-2, 2), (100, 6),
                                                                                (100, 2)]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    median = sum(t.intermediate_values[1] for t in study.trials[:2]) / 2  # of the two trials finished first
    hopeless = study.trials[2]
    assert hopeless.intermediate_values == {1: hopeless.value} and hopeless.value > 10 * median
    run = out / "trial-002"
    assert read_json(run / "trainer_state.json")["global_step"] == 2  # of 6: stopped at its first evaluation
    assert (run / "train_results.json").is_file()  # a pruned trial still leaves a complete run
    row = read_jsonl(out / "trials.jsonl")[2]
    assert row["state"] == "pruned" and row["pruned_at_evaluation"] == 1 and row["value"] == hopeless.value
    assert "trial 2 pruned at evaluation 1" in result.stdout
    # The last trial is as hopeless, but its only evaluation is its last: the run has ended, so it is complete.
    short = study.trials[3]
    assert list(short.intermediate_values) == [1] and short.intermediate_values[1] > 10 * median


def test_jobs_run_distinct_trials_at_once(tiny_bert, data, tmp_path, ftune):
    out = tmp_path / "sweep"
    result = ftune(*sweep_command(tiny_bert, data, out, "--trials", "2", "--jobs", "2"))
    assert result.exit_code == 0, result
    first, second = load_study(out).trials
    assert {first.state.name, second.state.name} == {"COMPLETE"}
    # Both ran at once: each started before the other finished.
    assert first.datetime_start < second.datetime_complete and second.datetime_start < first.datetime_complete
    assert [read_json(out / f"trial-{n:03d}" / "train_results.json")["train_samples"] for n in (0, 1)] == [36, 36]
    assert {r["run"] for r in read_jsonl(out / "trials.jsonl")} == {"trial-000", "trial-001"}


def test_two_processes_share_one_study_without_clashes(tiny_bert, data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    folders = [tmp_path / "machine-a", tmp_path / "machine-b"]
    processes = [subprocess.Popen([sys.executable, "-m", "ftune", *map(str, sweep_command(
        tiny_bert, data, folder, "--trials", "3", "--storage", storage, "--study-name", "shared"))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for folder in folders]
    outputs = [p.communicate(timeout=900) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.number for t in complete) == [0, 1, 2]
    ran = [{int(p.name.split("-")[1]) for p in folder.glob("trial-*")} for folder in folders]
    assert not ran[0] & ran[1] and ran[0] | ran[1] == {0, 1, 2}  # each trial in exactly one machine's folder
    pids = [{t.user_attrs["worker"]["pid"] for t in complete if t.number in numbers} for numbers in ran]
    assert all(len(p) <= 1 for p in pids) and not pids[0] & pids[1]
    for folder in folders:
        assert read_json(folder / "split.json") == read_json(folders[0] / "split.json")
        for trial in folder.glob("trial-*"):
            assert read_json(trial / "split.json")["fingerprint"] == read_json(folder / "split.json")["fingerprint"]
