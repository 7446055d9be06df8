"""Signals that save the work: SIGINT, SIGTERM and SIGUSR1 stop a training command after the current step with a
complete checkpoint, the lock released, one line naming --resume and exit code 130 / 143 / 138, and --resume then
ends with the weights of an uninterrupted run — in one process, on two ranks, and for the trials of a sweep. A
second signal while saving changes nothing; a kill before a checkpoint is marked leaves the previous one valid.

The signals are real (os.kill) and sent at a fixed step from inside the process (tests/helpers/signal_during_run.py,
signal_during_sweep.py, rank_signal/), so where they land does not depend on the machine's speed."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ftune.folders import is_complete, last_complete_checkpoint
from tests.conftest import ROOT, invoke, read_json, read_jsonl, run_cli_subprocess
from tests.test_classify import sentiment_rows, write_jsonl

SIGNAL_RUN = ROOT / "tests" / "helpers" / "signal_during_run.py"
SIGNAL_SWEEP = ROOT / "tests" / "helpers" / "signal_during_sweep.py"
RANK_HOOK = ROOT / "tests" / "helpers" / "rank_signal"
CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGUSR1": 138}
# 64 rows: 8 steps an epoch, so --max-steps 6 ends mid-epoch; a checkpoint at every evaluation (every 2 steps).
ARGS = ["--max-steps", "6", "--eval-steps", "2", "--checkpoint-minutes", "0", "--batch-size", "8", "--lr", "3e-3",
        "--max-length", "32", "--logging-steps", "1", "--precision", "fp32"]


def signalled(where: str, name: str, step: int, *command) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SIGNAL_RUN), where, name, str(step), *map(str, command)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def resume_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "--resume" in line]


def evaluated_steps(run: Path) -> list[int]:
    return [e["step"] for e in read_json(run / "trainer_state.json")["log_history"] if "eval_loss" in e]


def assert_stopped(result, run: Path, name: str, step: int) -> None:
    """Exit code, the one line, no lock, and a complete checkpoint at `step`: the newest, and the run not finished."""
    assert result.returncode == CODES[name], result.stderr[-3000:]
    assert resume_lines(result.stderr) == [f"error: stopped by {name} at step {step}; rerun the same command with "
                                           f"--resume to continue from checkpoint-{step}"], result.stderr[-3000:]
    assert not (run / ".ftune.lock").exists() and not (run / "train_results.json").exists()
    assert is_complete(run / f"checkpoint-{step}") and last_complete_checkpoint(run).name == f"checkpoint-{step}"


def assert_resumes_to(command: list, run: Path, checkpoint: str, reference: Path, in_process: bool = True) -> None:
    if in_process:
        resumed = invoke(*command, "--resume")
        assert resumed.exit_code == 0, resumed
    else:  # the ranks of --num-processes write to this process's own stdout
        resumed = run_cli_subprocess(*command, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint}" in resumed.stdout
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert read_json(run / "eval_results.json") == read_json(reference / "eval_results.json")
    assert evaluated_steps(run) == evaluated_steps(reference)  # the same evaluations, none skipped or repeated
    assert read_json(run / "trainer_state.json")["global_step"] == read_json(reference / "trainer_state.json")[
        "global_step"]
    assert not list(run.glob("checkpoint-*")) and not (run / ".ftune.lock").exists()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    base = tmp_path_factory.mktemp("signals")
    data = write_jsonl(base / "data.jsonl", sentiment_rows(64))
    reference = base / "uninterrupted"
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", reference, *ARGS)
    assert result.exit_code == 0, result
    return data, reference


# --------------------------------------------------------------------------------------------------
# One process


@pytest.mark.parametrize("name, step", [("SIGINT", 3), ("SIGTERM", 4), ("SIGUSR1", 6)],
                         ids=["SIGINT-mid-interval", "SIGTERM-at-an-evaluation", "SIGUSR1-at-the-last-step"])
def test_a_signal_saves_a_checkpoint_at_its_step_and_resume_gives_the_uninterrupted_weights(name, step, setup,
                                                                                             tiny_bert, tmp_path):
    data, reference = setup
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS]
    result = signalled("step", name, step, *command)
    assert_stopped(result, run, name, step)
    assert_resumes_to(command, run, f"checkpoint-{step}", reference)


def test_a_signal_while_the_trained_model_is_scored_saves_the_trained_state(setup, tiny_bert, tmp_path):
    """Training is over and the run not yet written: the trained state is saved as a complete checkpoint of the last
    step, and --resume scores and writes the run without training again."""
    data, reference = setup
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS]
    result = signalled("while-scoring", "SIGTERM", 0, *command)
    assert result.returncode == 143, result.stderr[-3000:]
    assert resume_lines(result.stderr) == ["error: stopped by SIGTERM after training, at step 6; rerun the same "
                                           "command with --resume to continue from checkpoint-6"], result.stderr
    assert not (run / ".ftune.lock").exists() and not (run / "train_results.json").exists()
    assert last_complete_checkpoint(run).name == "checkpoint-6"
    assert_resumes_to(command, run, "checkpoint-6", reference)


def test_a_signal_at_an_epochs_end_saves_after_the_epochs_evaluation(tiny_bert, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", sentiment_rows(64))
    args = ["--epochs", "2", "--checkpoint-minutes", "0", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32",
            "--logging-steps", "1", "--precision", "fp32"]
    reference = tmp_path / "uninterrupted"
    assert invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", reference, *args).exit_code == 0
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *args]
    result = signalled("step", "SIGTERM", 8, *command)  # the first epoch's last step: its evaluation comes after it
    assert_stopped(result, run, "SIGTERM", 8)
    assert evaluated_steps(run / "checkpoint-8") == [8]
    assert_resumes_to(command, run, "checkpoint-8", reference)


def test_a_second_signal_while_saving_changes_nothing(setup, tiny_bert, tmp_path):
    data, reference = setup
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS]
    result = signalled("while-saving", "SIGTERM", 3, *command)  # SIGINT before checkpoint-3 is marked complete
    assert_stopped(result, run, "SIGTERM", 3)
    assert_resumes_to(command, run, "checkpoint-3", reference)


@pytest.mark.numerics
def test_a_kill_before_a_checkpoint_is_marked_leaves_the_previous_one(tiny_bert, tmp_path):
    # Regression: its figure (mse) changes at every evaluation. Killed at an evaluation that beats every earlier one,
    # the checkpoint before is not kept as the best one: only the order of marking and removing keeps it until the new
    # one is complete.
    rows = [{**row, "label": float(row["label"] == "positive")} for row in sentiment_rows(64)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    args = ["--problem-type", "regression", *ARGS]
    reference = tmp_path / "uninterrupted"
    assert invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", reference, *args).exit_code == 0
    mse = {e["step"]: e["eval_mse"] for e in read_json(reference / "trainer_state.json")["log_history"]
           if "eval_mse" in e}
    better = [step for step in mse if step > 2 and mse[step] < min(v for s, v in mse.items() if s < step)]
    assert better, f"no evaluation after the first improves on the earlier ones: {mse}"
    step = better[0]
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *args]
    result = signalled("kill-before-mark", "SIGKILL", step, *command)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    # Every file of the new checkpoint is written, and the one before was not removed before it was complete.
    assert (run / f"checkpoint-{step}" / "trainer_state.json").is_file() and not is_complete(run / f"checkpoint-{step}")
    assert last_complete_checkpoint(run).name == f"checkpoint-{step - 2}"
    assert_resumes_to(command, run, f"checkpoint-{step - 2}", reference)


def test_a_signal_before_training_leaves_a_clean_folder(setup, tiny_bert, tmp_path):
    data, reference = setup
    run = tmp_path / "run"
    command = ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS]
    result = signalled("before-training", "SIGUSR1", 0, *command)  # the folder claimed, the Trainer being built
    assert result.returncode == 138, result.stderr[-3000:]
    assert resume_lines(result.stderr) == ["error: stopped by SIGUSR1; rerun the same command with --resume to "
                                           "continue from the last checkpoint"], result.stderr[-3000:]
    assert not (run / ".ftune.lock").exists() and not list(run.glob("checkpoint-*"))
    resumed = invoke(*command, "--resume")
    assert resumed.exit_code == 0, resumed
    assert "no complete checkpoint to resume from yet" in resumed.stdout
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_stop_signals_are_handled_only_while_a_command_runs_and_only_once():
    from ftune import signals
    from ftune.errors import RunInterrupted

    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    with signals.stop_on_signals():
        with pytest.raises(RunInterrupted) as stopped:
            os.kill(os.getpid(), signal.SIGUSR1)
        assert stopped.value.exit_code == 138 and signals.requested() == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat, while the first is acted on: ignored
    assert {s: signal.getsignal(s) for s in signals.STOP_SIGNALS} == before
    with signals.stop_on_signals(), signals.deferred():  # while training: only recorded
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested() == signal.SIGTERM
    assert signals.requested() is None


def test_the_launcher_exits_with_the_code_of_the_signal_that_stopped_the_ranks():
    from ftune.launch import _exit_code

    assert _exit_code(0, [], None) == 0
    assert _exit_code(1, [143, 143], None) == 143        # a rank received it (a scheduler signals every process)
    assert _exit_code(1, [1], signal.SIGUSR1) == 138      # this process received it and passed it on
    assert _exit_code(1, [2], None) == 2 and _exit_code(1, [1, -9], None) == 1


# --------------------------------------------------------------------------------------------------
# Two ranks


def rank_signalled(spec: str, *command) -> subprocess.CompletedProcess:
    """`ftune COMMAND` with the rank hook. Ranks that disagree on the step would wait for each other for good: after
    a while they, torchrun and the command are killed (torchrun starts each rank in a session of its own), and the
    test fails."""
    import psutil

    path = os.pathsep.join(p for p in (str(RANK_HOOK), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "FTUNE_TEST_RANK_SIGNAL": spec}
    process = subprocess.Popen([sys.executable, "-m", "ftune", *map(str, command)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            child.kill()
        process.communicate()
        pytest.fail(f"the ranks did not stop ({spec})")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def two_ranks(setup, tiny_bert, tmp_path_factory):
    data, _ = setup
    reference = tmp_path_factory.mktemp("ranks") / "uninterrupted"

    def command(run: Path) -> list:
        return ["classify", "--model", tiny_bert, "--data", data, "--output-dir", run, *ARGS, "--batch-size", "4",
                "--num-processes", "2"]

    result = run_cli_subprocess(*command(reference))
    assert result.returncode == 0, result.stderr[-3000:]
    return command, reference


def test_a_signal_to_one_rank_stops_every_rank_at_its_step(two_ranks, tmp_path):
    command, reference = two_ranks
    run = tmp_path / "run"
    command = command(run)
    result = rank_signalled("self:SIGTERM:3:1", *command)  # rank 1 only: rank 0 learns of it at the step's end
    assert_stopped(result, run, "SIGTERM", 3)
    assert sorted(p.name for p in (run / "checkpoint-3").glob("rng_state_*.pth")) == ["rng_state_0.pth",
                                                                                        "rng_state_1.pth"]
    assert_resumes_to(command, run, "checkpoint-3", reference, in_process=False)


def test_the_launcher_passes_its_signal_on_to_the_ranks(two_ranks, tmp_path):
    command, _ = two_ranks
    run = tmp_path / "run"
    # Rank 0 sends SIGUSR1 to the `ftune` process that launched the ranks, and waits until it comes back.
    result = rank_signalled("launcher:SIGUSR1:4:0", *command(run))
    assert_stopped(result, run, "SIGUSR1", 4)


# --------------------------------------------------------------------------------------------------
# A sweep


def test_a_signal_to_a_sweep_saves_its_trial_and_resume_continues_it(setup, tiny_bert, tmp_path):
    data, _ = setup
    out = tmp_path / "sweep"
    command = ["sweep", "classify", "--model", tiny_bert, "--data", data, "--output-dir", out, "--max-steps", "6",
               "--eval-steps", "2", "--batch-size", "8", "--max-length", "16", "--val-fraction", "0.25",
               "--logging-steps", "1", "--precision", "fp32", "--param", "lr=1e-3..3e-2:log", "--param",
               "warmup=0.0..0.2", "--trials", "2", "--seed", "42", "--keep", "all"]
    # SIGTERM to the sweep when trial 1 reports its first evaluation (step 2).
    stopped = subprocess.run([sys.executable, str(SIGNAL_SWEEP), "SIGTERM", "1", *map(str, command)],
                             capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert resume_lines(stopped.stderr) == ["error: stopped by SIGTERM; rerun the same command with --resume to "
                                            "continue from the last checkpoint"], stopped.stderr[-3000:]
    assert "trial 1 stopped by SIGTERM; --resume continues it from checkpoint-2" in stopped.stdout
    trial = out / "trial-001"
    log = (out / "logs" / "trial-001.log").read_text()
    assert "error: stopped by SIGTERM at step 2; rerun the same command with --resume to continue from " \
           "checkpoint-2" in log
    assert last_complete_checkpoint(trial).name == "checkpoint-2" and not (trial / ".ftune.lock").exists()
    assert [(r["number"], r["state"]) for r in read_jsonl(out / "trials.jsonl")] == [(0, "complete"),
                                                                                      (1, "interrupted")]
    finished = _digest(out / "trial-000")

    resumed = invoke(*command, "--resume")
    assert resumed.exit_code == 0, resumed
    assert "trial 1: " in resumed.stdout and "(continued)" in resumed.stdout and "trial 2" not in resumed.stdout
    assert "resuming from checkpoint-2" in (out / "logs" / "trial-001.log").read_text()
    assert [(r["number"], r["state"]) for r in read_jsonl(out / "trials.jsonl")] == [(0, "complete"),
                                                                                      (1, "complete")]
    assert _digest(out / "trial-000") == finished
    # Continued, it ends where the same run uninterrupted ends.
    alone = tmp_path / "alone"
    plain = invoke("classify", "--config", trial / "ftune.yaml", "--output-dir", alone)
    assert plain.exit_code == 0, plain
    assert (trial / "model.safetensors").read_bytes() == (alone / "model.safetensors").read_bytes()
    assert evaluated_steps(trial) == evaluated_steps(alone)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}
