"""Never lose a run: kill -9 during training and during a checkpoint save, then --resume, ends with the weights
of an uninterrupted run; --overwrite replaces a run only when the new one has finished; --resume refuses another
command; a diverging loss stops at once; the folder lock is atomic and outlives no process."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, invoke, read_json, run_cli_subprocess
from tests.test_classify import sentiment_rows, write_jsonl

KILL = ROOT / "tests" / "helpers" / "kill_during_run.py"
ARGS = ["--max-steps", "8", "--eval-steps", "2", "--checkpoint-minutes", "0", "--batch-size", "8", "--lr", "3e-3",
        "--max-length", "32", "--logging-steps", "1"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` and the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def killed(where: str, step: int, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(KILL), where, str(step), *map(str, args)], capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == -9, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    base = tmp_path_factory.mktemp("safety")
    data = write_jsonl(base / "data.jsonl", sentiment_rows(64))
    reference = base / "uninterrupted"
    result = run_cli_subprocess("classify", "--model", tiny_bert, "--data", data, "--output-dir", reference, *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return base, data, reference


@pytest.mark.parametrize("where", ["after-checkpoint", "during-save"])
def test_kill_then_resume_gives_the_weights_of_an_uninterrupted_run(where, setup, tiny_bert, tmp_path):
    base, data, reference = setup
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS]
    killed(where, 4, *command)
    assert not (run / "train_results.json").exists()
    if where == "during-save":
        assert (run / "checkpoint-4").is_dir() and not (run / "checkpoint-4" / ".ftune-complete").exists()
    refused = invoke(*command)  # an interrupted run is not silently started over
    assert refused.exit_code == 2 and "--resume" in refused.stderr

    resumed = invoke(*command, "--resume")
    assert resumed.exit_code == 0, resumed
    if where == "during-save":
        assert "skipping checkpoint-4: its save never completed" in resumed.stderr
        assert "resuming from checkpoint-2" in resumed.stdout
    else:
        assert "resuming from checkpoint-4" in resumed.stdout
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert read_json(run / "eval_results.json") == read_json(reference / "eval_results.json")
    # train_results.json reports the whole run's training loss, not only the resumed steps'.
    assert read_json(run / "train_results.json")["train_loss"] == pytest.approx(
        read_json(reference / "train_results.json")["train_loss"], rel=1e-9)
    assert not list(run.glob("checkpoint-*")) and not (run / ".ftune.lock").exists()


def test_overwrite_replaces_only_when_the_new_run_has_finished(setup, tiny_bert, tmp_path):
    import shutil

    base, data, reference = setup
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = tree_digest(run)
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS, "--seed", "7",
               "--overwrite"]

    bad = invoke(*command[:4], tmp_path / "nope.jsonl", *command[5:])  # bad input: nothing changes
    assert bad.exit_code == 2 and tree_digest(run) == before

    killed("after-checkpoint", 4, *command)  # interrupted while the new run trains
    assert tree_digest(run) == before
    staging = tmp_path / ".run.ftune-staging"
    assert (staging / "checkpoint-4" / ".ftune-complete").is_file()

    killed("before-swap", 0, *command, "--resume")  # finished, but killed before the swap
    assert tree_digest(run) == before and (staging / "train_results.json").is_file()

    done = invoke(*command)  # starts the replacement over and swaps it in
    assert done.exit_code == 0, done
    assert not staging.exists() and not list(tmp_path.glob(".run.ftune-*"))
    import yaml

    assert yaml.safe_load((run / "ftune.yaml").read_text())["seed"] == 7
    assert (run / "train_results.json").is_file() and (run / ".ftune-run").is_file()


def test_resume_refuses_another_command_and_rewrites_nothing(setup, tiny_bert, tmp_path):
    base, data, reference = setup
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS]
    killed("after-checkpoint", 4, *command)
    before = tree_digest(run)
    other_lr = invoke(*command, "--lr", "1e-3", "--resume")
    assert other_lr.exit_code == 2 and "lr (run: 0.003, now: 0.001)" in other_lr.stderr, other_lr
    other_data = write_jsonl(tmp_path / "other.jsonl", sentiment_rows(64, seed=5))
    changed = invoke(*command[:4], other_data, *command[5:], "--resume")
    assert changed.exit_code == 2 and "held-out rows differ" in changed.stderr and "data" in changed.stderr
    assert tree_digest(run) == before
    assert invoke(*command, "--resume").exit_code == 0


def test_a_diverging_loss_stops_at_once_and_keeps_the_checkpoints(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", sentiment_rows(64))
    run = tmp_path / "run"
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", run, "--max-steps", "60",
                    "--eval-steps", "1", "--checkpoint-minutes", "0", "--batch-size", "8", "--lr", "1e12",
                    "--max-length", "32")
    assert result.exit_code == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the training loss is") and "lower --lr" in lines[0]
    step = int(lines[0].split(" at step ")[1].split()[0])
    complete = [p for p in run.glob("checkpoint-*") if (p / ".ftune-complete").is_file()]
    assert complete and max(int(p.name.split("-")[1]) for p in complete) == step - 1
    assert not (run / "train_results.json").exists()


def test_a_live_lock_refuses_and_a_dead_one_is_taken_over(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", sentiment_rows(32))
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, "--max-steps", "4",
               "--batch-size", "8", "--checkpoint-minutes", "0"]
    killed("after-checkpoint", 2, *command, "--eval-steps", "2")  # leaves a lock file behind
    assert (run / ".ftune.lock").is_file()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(run / '.ftune.lock')!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0); os.write(fd, f'{os.getpid()} here'.encode())\n"
        "print('locked', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = invoke(*command, "--eval-steps", "2", "--resume")
        assert busy.exit_code == 2 and f"pid {holder.pid}" in busy.stderr and "in use" in busy.stderr
    finally:
        holder.kill()
        holder.wait()
    resumed = invoke(*command, "--eval-steps", "2", "--resume")  # the lock of a dead process is taken over
    assert resumed.exit_code == 0, resumed
    assert json.loads((run / "train_results.json").read_text())["train_samples"] > 0


def test_the_best_model_is_kept_and_restored_and_a_later_record_is_dropped_on_resume(tmp_path):
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ftune.trainers import BestModel

    model = torch.nn.Linear(2, 2)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    keeper, control = BestModel(tmp_path / "best-model", "f1", greater_is_better=True), TrainerControl()
    state = TrainerState()
    keeper.on_train_begin(args, state, control)
    for step, f1 in ((2, 0.5), (4, 0.9), (6, 0.7)):
        state.global_step = step
        with torch.no_grad():
            model.weight.fill_(step)
        keeper.on_evaluate(args, state, control, metrics={"eval_f1": f1}, model=model)
    keeper.on_train_end(args, state, control, model=model)
    assert torch.all(model.weight == 4)  # the weights of the best evaluation (step 4), not the last
    assert json.loads((tmp_path / "best-model" / "best.json").read_text()) == {"step": 4, "metric": 0.9}

    resumed = BestModel(tmp_path / "best-model", "f1", greater_is_better=True)
    state.global_step = 2  # resuming from checkpoint-2: the record from step 4 is redone, not trusted
    resumed.on_train_begin(args, state, control)
    assert resumed.best is None and not (tmp_path / "best-model").exists()
