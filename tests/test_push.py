"""`ftune push` and `--push-to-hub`: the exact files a push uploads (--dry-run), and every refusal — offline, no
token, an unfinished run, a bad repo id — in one line before anything changes. Nothing here reaches the real Hub:
a local server stands in for it where a test needs the Hub to be reachable, and answers with errors, so the
upload path is exercised up to the Hub's answer (and the token never shows)."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import invoke
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_safety import tree_digest

ARGS = ["--max-steps", "2", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--val-fraction", "0.25"]
TOKEN = "hf_testTokenThatMustNeverBePrinted"
RUN_FILES = {"README.md", "confusion_matrix.png", "eval_details.json", "eval_results.json", "ftune.yaml",
             "learning_curves.png", "split.json", "tokenizer.json", "tokenizer_config.json", "train_results.json",
             "trainer_state.json"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", sentiment_rows(32))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, data):
    base = tmp_path_factory.mktemp("push")
    for name, flags in [("full", []), ("lora", ["--lora"])]:
        result = invoke("classify", "--model", tiny_bert, "--data", data, "--output-dir", base / name, *ARGS,
                        *flags, "--quiet")
        assert result.exit_code == 0, result
    return base


def listed_files(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("kind, model_files", [("full", {"config.json", "model.safetensors"}),
                                               ("lora", {"adapter_config.json", "adapter_model.safetensors"})])
def test_dry_run_lists_exactly_the_files_to_upload(kind, model_files, runs, tmp_path):
    run = tmp_path / kind
    shutil.copytree(runs / kind, run)
    # What a run folder can also hold, none of which is uploaded: checkpoints, the best model kept while training,
    # results on other data, a lock, a half-written file, ftune's markers.
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    (run / "best-model").mkdir()
    (run / "evals" / "other-test").mkdir(parents=True)
    (run / "eval_results.json.tmp").write_text("{")
    (run / ".ftune.lock").write_text("1 host\n")
    before = tree_digest(run)
    result = invoke("push", run, "--repo", "jane/tiny-sentiment", "--dry-run")
    assert result.exit_code == 0, result
    assert listed_files(result.stdout) == sorted(RUN_FILES | model_files)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"would push {len(RUN_FILES | model_files)} files (")
    assert "to jane/tiny-sentiment (public)" in lines[0]
    left_out = next(line for line in lines if line.startswith("left out: "))
    for name in ("eval_predictions.jsonl", "training_args.bin", "checkpoint-2/", "best-model/", "evals/"):
        assert name in left_out
    assert lines[-1] == "dry run: nothing was uploaded"
    assert tree_digest(run) == before and result.stderr == ""


def test_the_pushed_model_card_loads_the_repo(runs):
    from ftune.push import _payload
    from ftune.rundir import open_run

    run = open_run(runs / "full")
    card = _payload(run, run.path / "README.md", "jane/tiny-sentiment").decode()
    assert '"jane/tiny-sentiment"' in card and f'"{run.path.resolve()}"' not in card
    assert "base_model:" not in card  # the base model is a local folder, not a Hub id
    assert card.replace('"jane/tiny-sentiment"', f'"{run.path.resolve()}"') == \
        (run.path / "README.md").read_text().replace("base_model: " + run.config.model + "\n", "")


def test_refusals_are_one_line_and_change_nothing(runs, tmp_path, ftune):
    run = tmp_path / "full"
    shutil.copytree(runs / "full", run)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs / "full", unfinished)
    (unfinished / "train_results.json").unlink()
    before = tree_digest(tmp_path)
    cases = {"HF_HUB_OFFLINE": ("push", run, "--repo", "jane/x"),              # conftest: offline, as on CI
             "did not finish": ("push", unfinished, "--repo", "jane/x", "--dry-run"),
             "not a Hub repo id": ("push", run, "--repo", "jane/x/y", "--dry-run"),
             "does not exist": ("push", tmp_path / "nope", "--repo", "jane/x")}
    for expected, args in cases.items():
        result = ftune(*args)
        assert result.exit_code == 2, (args, result)
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result
        assert result.stderr.startswith("error: ") and expected in result.stderr
    assert tree_digest(tmp_path) == before


def test_push_to_hub_is_checked_before_training(tiny_bert, data, tmp_path, ftune):
    for extra, expected in [(["--push-to-hub", "jane/x"], "HF_HUB_OFFLINE"),
                            (["--push-to-hub", "not a repo"], "not a Hub repo id"),
                            (["--private"], "--push-to-hub")]:
        out = tmp_path / "run"
        result = ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", out, *ARGS, *extra)
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and expected in result.stderr, result
        assert result.stdout == "" and not out.exists()


class FakeHub(BaseHTTPRequestHandler):
    """Answers every request with `status` and an error that quotes the request's Authorization header."""

    status = 401

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"error": f"rejected request with {self.headers.get('Authorization')}"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The Hub switched on and reachable at a local server (that refuses everything), with no token."""
    import huggingface_hub.constants

    import ftune.hub

    server = HTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(ftune.hub, "_checked", False)
    yield monkeypatch
    server.shutdown()
    server.server_close()


def test_no_token_is_refused_before_anything(online, runs, tmp_path, ftune):
    run = tmp_path / "full"
    shutil.copytree(runs / "full", run)
    result = ftune("push", run, "--repo", "jane/x")
    assert result.exit_code == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert "no Hugging Face token" in result.stderr and "HF_TOKEN" in result.stderr


@pytest.mark.parametrize("status, code, expected", [(401, 2, "refused the token"), (400, 1, "failed")])
def test_hub_errors_are_one_line_without_the_token(status, code, expected, online, runs, tmp_path, ftune):
    online.setenv("HF_TOKEN", TOKEN)
    online.setattr(FakeHub, "status", status)
    result = ftune("push", runs / "full", "--repo", "jane/x")
    assert result.exit_code == code, result
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1 and expected in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert result.stdout.startswith(f"pushing {len(RUN_FILES) + 2} files (")


def test_push_to_hub_pushes_at_the_end_and_keeps_the_run_when_the_hub_refuses(online, tiny_bert, data, tmp_path,
                                                                              ftune):
    online.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "run"
    result = ftune("classify", "--model", tiny_bert, "--data", data, "--output-dir", out, *ARGS, "--push-to-hub",
                   "jane/x")
    assert result.exit_code == 2, result
    assert (out / "train_results.json").is_file()  # trained and finished; only the push failed
    assert f"pushing {len(RUN_FILES) + 2} files of {out} to jane/x" in result.stdout
    assert len(result.stderr.splitlines()) == 1 and "refused the token" in result.stderr
    assert f"push it with ftune push {out} --repo jane/x" in result.stderr
    assert TOKEN not in result.stdout + result.stderr
