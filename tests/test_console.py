"""What a run prints: plain lines when not on a terminal (no raw dicts, no escape codes, one compact line per
evaluation), only the final table with --quiet, one JSON object per event with --log-format json, one progress bar
per phase on a terminal, and exactly one `error:` line on stderr in every mode."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import pytest

from ftune.console import metrics_table
from tests.conftest import ROOT, invoke, read_json
from tests.test_classify import sentiment_rows, write_jsonl

# 6 steps, evaluations at steps 3 and 6, the loss logged at steps 1 (first), 2, 3 (evaluation), 4, 6.
ARGS = ["--max-steps", "6", "--eval-steps", "3", "--logging-steps", "2", "--batch-size", "8", "--lr", "3e-3",
        "--max-length", "32", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(48))


def train(tiny_bert, data, out, *flags):
    result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", out, *ARGS, *flags)
    assert result.exit_code == 0, result
    return result


def logged(run) -> tuple[list[dict], list[dict]]:
    """The training-loss entries and the evaluation entries of the run's log history."""
    history = read_json(run / "trainer_state.json")["log_history"]
    steps = [e for e in history if "loss" in e]
    evals = [e for e in history if "eval_f1" in e]
    return steps, evals


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert, data):
    out = tmp_path_factory.mktemp("console") / "text"
    return out, train(tiny_bert, data, out)


def test_text_output_is_plain_with_one_compact_line_per_evaluation(text_run):
    run, result = text_run
    output = result.stdout + result.stderr
    assert "\x1b[" not in output and "\r" not in output  # not a terminal: no bars, no escape codes
    assert "{'" not in output and "'loss'" not in output  # none of the Trainer's raw dict lines
    for chatter in ("Writing model shards", "Loading weights", "it/s]"):
        assert chatter not in output
    lines = result.stdout.splitlines()
    steps, evals = logged(run)
    eval_lines = [line for line in lines if line.startswith("eval  ")]
    assert len(eval_lines) == len(evals) == 2
    for line, entry in zip(eval_lines, evals):
        assert f"step {entry['step']}/6" in line
        assert f"f1 {entry['eval_f1']:.4f}" in line and f"accuracy {entry['eval_accuracy']:.4f}" in line
        assert "runtime" not in line and "samples_per_second" not in line
    step_lines = [line for line in lines if line.startswith("step ")]
    assert [int(line.split()[1].split("/")[0]) for line in step_lines] == [e["step"] for e in steps] == [1, 2, 3, 4, 6]
    for line, entry in zip(step_lines, steps):
        assert f"loss {entry['loss']:.4f}" in line and "lr " in line and "eta" in line
    assert lines[0].startswith("tokenising: 48 rows in ")
    assert any(line.startswith("training: 6 steps in ") for line in lines)
    table = metrics_table(read_json(run / "eval_results.json"), title="held-out metrics (12 rows)")
    assert table in result.stdout
    assert lines[-1] == f"run saved to {run}"
    assert result.stderr == ""


def test_quiet_prints_only_the_final_table(tiny_bert, data, text_run, tmp_path):
    out = tmp_path / "quiet"
    result = train(tiny_bert, data, out, "--quiet")
    table = metrics_table(read_json(out / "eval_results.json"), title="held-out metrics (12 rows)")
    assert result.stdout == table + "\n"
    assert result.stderr == ""
    # The same run as without --quiet: only the printing differs.
    assert read_json(out / "eval_results.json") == read_json(text_run[0] / "eval_results.json")


def test_json_log_is_one_object_per_event(tiny_bert, data, tmp_path):
    out = tmp_path / "json"
    result = train(tiny_bert, data, out, "--log-format", "json")
    assert result.stderr == ""
    events = [json.loads(line) for line in result.stdout.splitlines()]  # every line is one JSON object
    kinds = [e["event"] for e in events]
    assert kinds[0] == "phase" and events[0]["phase"] == "tokenising" and events[0]["completed"] == 48
    assert kinds[1] == "start" and kinds[-1] == "end"
    start = events[1]
    assert start["task"] == "classify" and start["train_rows"] == 36 and start["eval_rows"] == 12
    assert start["method"] == "full" and start["output_dir"] == str(out)
    steps, evals = logged(out)
    step_events = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in step_events] == [e["step"] for e in steps]
    assert [e["loss"] for e in step_events] == pytest.approx([e["loss"] for e in steps])
    assert all(e["max_steps"] == 6 and e["learning_rate"] > 0 for e in step_events)
    eval_events = [e for e in events if e["event"] == "eval"]
    assert len(eval_events) == len(evals) == 2
    for event, entry in zip(eval_events, evals):
        assert event["step"] == entry["step"]
        assert event["metrics"]["eval_f1"] == pytest.approx(entry["eval_f1"])
        assert "eval_runtime" not in event["metrics"]
    end = events[-1]
    assert end["status"] == "finished" and end["output_dir"] == str(out)
    assert end["metrics"] == read_json(out / "eval_results.json")
    assert end["train"] == read_json(out / "train_results.json")


def test_eval_command_modes(text_run, ftune, tmp_path):
    run, _ = text_run
    quiet = ftune("eval", run, "--output-dir", tmp_path / "q", "--quiet")
    assert quiet.exit_code == 0, quiet
    metrics = read_json(tmp_path / "q" / "eval_results.json")
    assert quiet.stdout == metrics_table(metrics, title="recorded held-out split (12 rows)") + "\n"
    logged_json = ftune("eval", run, "--output-dir", tmp_path / "j", "--log-format", "json")
    assert logged_json.exit_code == 0, logged_json
    events = [json.loads(line) for line in logged_json.stdout.splitlines()]
    assert [e["event"] for e in events] == ["end"]
    assert events[0]["metrics"] == read_json(tmp_path / "j" / "eval_results.json") and events[0]["rows"] == 12


@pytest.mark.parametrize("mode", [[], ["--quiet"], ["--log-format", "json"]])
def test_errors_are_one_line_on_stderr_in_every_mode(mode, tiny_bert, ftune, tmp_path):
    missing = ftune("classify", "--model", tiny_bert, "--data", tmp_path / "nope.csv", "--output-dir",
                    tmp_path / "run", *mode)
    assert missing.exit_code == 2
    assert missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1 and missing.stderr.startswith("error: ")
    assert not (tmp_path / "run").exists()
    bad_format = ftune("classify", "--data", tmp_path / "x.csv", "--log-format", "yaml")
    assert bad_format.exit_code == 2 and len(bad_format.stderr.splitlines()) == 1
    assert bad_format.stderr.startswith("error: ") and "yaml" in bad_format.stderr


def terminal_screen(command: list[str], columns: int = 150, rows: int = 60) -> str:
    """Run `command` on a pseudo-terminal and return the screen it leaves (rendered by a terminal emulator)."""
    import pyte

    leader, follower = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=env,
                               close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    screen = pyte.Screen(columns, rows * 4)
    pyte.ByteStream(screen).feed(b"".join(chunks))
    return "\n".join(line.rstrip() for line in screen.display if line.strip())


def test_a_terminal_gets_one_bar_per_phase(tiny_bert, data, tmp_path):
    out = tmp_path / "tty"
    screen = terminal_screen([sys.executable, "-m", "ftune", "classify", "--model", str(tiny_bert), "--data",
                              str(data), "--output-dir", str(out), *ARGS])
    lines = screen.splitlines()
    bars = {name: [line for line in lines if line.startswith(name)] for name in ("tokenising", "training",
                                                                              "evaluating")}
    assert all(len(found) == 1 for found in bars.values()), screen  # each phase left exactly one line
    assert "48/48 rows" in bars["tokenising"][0]
    steps, evals = logged(out)
    assert "6/6 steps" in bars["training"][0] and f"loss {steps[-1]['loss']:.4f}" in bars["training"][0]
    assert "lr " in bars["training"][0]
    assert len([line for line in lines if line.startswith("eval  ")]) == len(evals) == 2
    assert "{'" not in screen and "Loading weights" not in screen and "Writing model shards" not in screen
    assert re.search(r"^held-out metrics \(12 rows\)$", screen, re.M) and lines[-1] == f"run saved to {out}"


def test_predict_on_a_terminal_shows_its_bar_and_its_results_only(text_run):
    run, _ = text_run
    screen = terminal_screen([sys.executable, "-m", "ftune", "predict", str(run), "--text", "a great dog", "--text",
                              "a bad cat"])
    lines = screen.splitlines()
    assert len(lines) == 3 and lines[0].startswith("predicting") and "1/1 batches" in lines[0], screen
    assert [json.loads(line)["text"] for line in lines[1:]] == ["a great dog", "a bad cat"]
