"""`ftune serve` for the tasks that predict: real servers in subprocesses on free ports, real HTTP clients.

`/v1/predict` answers equal `ftune predict`'s for the same rows (classify single-label, multi-label and regression,
ner, qa, summarize, translate), in one request and row by row; 200 requests from 16 concurrent clients give the
answers of the same rows sent one at a time; the predict path's forward-pass scorer gives the inference Trainer's
outputs; a lone request does not wait for company; every bad request is an error object with its status and the server
answers the next good request; the command's own refusals are one line and exit code 2.

The helpers at the top (`Server`, `stop_servers`, `assert_error`) serve tests/test_serve_generation.py too.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import invoke, read_jsonl, run_cli_subprocess, train_run
from tests.test_classify import sentiment_rows
from tests.test_classify_problem_types import multi_label_rows, regression_rows
from tests.test_errors import assert_usage_error
from tests.test_ner import sentences, write_conll
from tests.test_qa import qa_rows
from tests.test_summarize import summary_rows
from tests.test_translate import hub_rows

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"ready at (http://\S+) ")
SCORE_TOLERANCE = 1e-5      # the spec's: a served score equals ftune predict's within this
TRAIN = ["--max-steps", "4", "--batch-size", "8", "--logging-steps", "50", "--precision", "fp32"]


# ---- helpers ------------------------------------------------------------------------------------------


class Server:
    """`ftune serve ARGS --port 0` in a subprocess; `url` once its ready line has been read (`wait_ready`)."""

    def __init__(self, *args):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ftune", "serve", *map(str, args), "--port", "0"], stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, cwd=str(ROOT), env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.url = ""
        self.ready_line = ""

    def wait_ready(self) -> "Server":
        if not self.url:
            self.ready_line = self.process.stdout.readline()
            found = READY.search(self.ready_line)
            assert found, f"no ready line: {self.ready_line!r}; stderr: {self.read_stderr()}"
            self.url = found.group(1)
        return self

    def read_stderr(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` to the server and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=300)


def stop_servers(servers: dict[str, Server]) -> None:
    for server in servers.values():
        server.stop()


def assert_same_answers(served, expected, where: str = "", tolerance: float = SCORE_TOLERANCE) -> None:
    """Equal labels, answers and texts; numbers within `tolerance`."""
    if isinstance(expected, float) or isinstance(served, float):
        assert isinstance(served, (int, float)) and abs(served - expected) <= tolerance, \
            f"{where}: {served} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(served, dict) and served.keys() == expected.keys(), f"{where}: {served} != {expected}"
        for key in expected:
            assert_same_answers(served[key], expected[key], f"{where}.{key}", tolerance)
    elif isinstance(expected, list):
        assert isinstance(served, list) and len(served) == len(expected), f"{where}: {served} != {expected}"
        for index, (a, b) in enumerate(zip(served, expected)):
            assert_same_answers(a, b, f"{where}[{index}]", tolerance)
    else:
        assert served == expected, f"{where}: {served!r} != {expected!r}"


def assert_error(response, status: int, code: str | None = None) -> dict:
    """An OpenAI-style error object with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    if code is not None:
        assert error["code"] == code, error
    return error


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- the runs and their servers -----------------------------------------------------------------------


def _rows_by_task() -> dict[str, list[dict]]:
    """The rows each run is asked about, of varied lengths, in the fields `ftune predict --input` reads."""
    return {
        "classify": [{"text": r["text"]} for r in sentiment_rows(10, seed=3)],
        "multi": [{"text": r["text"]} for r in multi_label_rows(10, seed=3)],
        "regression": [{"text": r["text"]} for r in regression_rows(10, seed=3)],
        "ner": [{"text": " ".join(tokens)} for tokens, _ in sentences(10, seed=3)],
        "qa": [{"question": r["question"], "context": r["context"]} for r in qa_rows(8, seed=3)],
        "summarize": [{"document": r["document"]} for r in summary_rows(8, seed=3)],
        "translate": [{"en": r["translation"]["en"]} for r in hub_rows(8, seed=3)],
    }


ROWS = _rows_by_task()


SERVER_OPTIONS = {"classify": ("--model-name", "sentiment", "--max-batch-size", "8", "--max-wait-ms", "20")}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bert, tiny_t5):
    """A briefly trained run of each task that predicts, and a server of each: a run's server starts as soon as it
    is trained, so that it loads while the next run trains."""
    data = tmp_path_factory.mktemp("serve-data")
    conll = data / "conll"
    conll.mkdir()
    write_conll(conll / "train.txt", sentences(40))
    sources = {
        "classify": ("classify", write_rows(data / "sentiment.jsonl", sentiment_rows(40)), ["--max-length", "32"]),
        "multi": ("classify", write_rows(data / "multi.jsonl", multi_label_rows(40)),
                  ["--problem-type", "multi-label", "--max-length", "32"]),
        "regression": ("classify", write_rows(data / "regression.jsonl", regression_rows(40)),
                       ["--problem-type", "regression", "--max-length", "32"]),
        "ner": ("ner", conll, ["--max-length", "32"]),
        "qa": ("qa", write_rows(data / "qa.jsonl", qa_rows(32, seed=1)), ["--max-length", "48", "--doc-stride", "16"]),
        "summarize": ("summarize", write_rows(data / "docs.jsonl", summary_rows(40)),
                      ["--max-length", "16", "--max-target-length", "8"]),
        "translate": ("translate", write_rows(data / "pairs.jsonl", hub_rows(40)),
                      ["--source-lang", "en", "--target-lang", "fr", "--max-length", "24", "--max-target-length", "8"]),
    }
    runs, servers = {}, {}
    try:
        for name, (task, source, extra) in sources.items():
            model = tiny_t5 if task in ("summarize", "translate") else tiny_bert
            runs[name] = train_run(tmp_path_factory, task, name, "--model", model, "--data", source, *TRAIN,
                                   *extra).path
            servers[name] = Server(runs[name], *SERVER_OPTIONS.get(name, ()))
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        stop_servers(servers)
        raise
    yield SimpleNamespace(runs=runs, servers=servers)
    for name, server in servers.items():  # SIGTERM: a server stops with exit code 0, without a traceback
        assert server.stop(signal.SIGTERM) == 0, (name, server.read_stderr())
        assert "Traceback" not in server.read_stderr(), name


@pytest.fixture(scope="module")
def runs(served):
    return served.runs


@pytest.fixture(scope="module")
def servers(served):
    return served.servers


@pytest.fixture(scope="module")
def references(runs, tmp_path_factory):
    """What `ftune predict RUN --input ROWS` prints for each run's rows."""
    folder = tmp_path_factory.mktemp("predicted")
    found = {}
    for name, run in runs.items():
        output = folder / f"{name}.jsonl"
        result = invoke("predict", run, "--input", write_rows(folder / f"{name}-in.jsonl", ROWS[name]),
                        "--output", output)
        assert result.exit_code == 0, result
        found[name] = read_jsonl(output)
    return found


def post(server: Server, path: str, body, **kwargs):
    return httpx.post(server.url + path, json=body, timeout=120, **kwargs)


def completions_sent_at_once(send, prompts: list[str], max_tokens: int) -> list[dict]:
    """One /v1/completions request per prompt, all sent at once from threads (`send(body)` posts one); the answers
    in the prompts' order."""
    answers = [None] * len(prompts)

    def ask(index):
        answers[index] = send({"prompt": prompts[index], "max_tokens": max_tokens}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


# ---- the answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ROWS))
def test_predict_answers_equal_ftune_predict(name, servers, references):
    server = servers[name]
    whole = post(server, "/v1/predict", {"inputs": ROWS[name]})
    assert whole.status_code == 200, whole.text
    assert_same_answers(whole.json()["predictions"], references[name], name)
    for row, expected in zip(ROWS[name][:3], references[name]):  # alone, in a batch of one
        alone = post(server, "/v1/predict", {"inputs": [row]})
        assert_same_answers(alone.json()["predictions"], [expected], name)


@pytest.mark.parametrize("name", list(ROWS))
def test_predictions_come_from_the_forward_pass_as_from_the_trainer(name, runs):
    """The predict path scores with the model's forward pass (ftune.engines.ForwardScorer) where the task's Trainer
    scores by one forward pass, and with that Trainer where it generates: raw outputs within 1e-6 of the inference
    Trainer's (padding across batches included: batches of 3 rows of varied lengths), answers equal."""
    import datasets
    import numpy as np

    from ftune.engines import ForwardScorer, TransformersEngine
    from ftune.rundir import open_run

    run = open_run(runs[name])
    task, config, state = run.task, run.config, run.state
    rows, names = ROWS[name], [f"row {i}" for i in range(len(ROWS[name]))]
    with TransformersEngine(run, batch_size=3) as engine:
        scorer = engine.scorer(config, phase="predicting")
        trainer = engine.scorer(config, phase="evaluating")
        assert isinstance(scorer, ForwardScorer) == (not task.generates_text), type(scorer)
        assert not isinstance(trainer, ForwardScorer)
        features = task.features(config, engine.tokenizer, datasets.Dataset.from_list(rows), state, purpose="predict")
        inputs, _ = task.scoring_inputs(features)
        direct, by_trainer = (s.predict(inputs, metric_key_prefix="predict").predictions for s in (scorer, trainer))
        for a, b in zip(*(p if isinstance(p, tuple) else (p,) for p in (direct, by_trainer))):
            assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        answers = [task.predict(config, s, engine.tokenizer, state, rows, names) for s in (scorer, trainer)]
    assert_same_answers(answers[0], answers[1], name, tolerance=1e-6)


@pytest.mark.parametrize("name", list(ROWS))
def test_rows_in_memory_answer_as_a_dataset_of_them_and_alone_as_in_a_batch(name, runs):
    """The predict path keeps a call's rows and features in memory (ftune.data.InMemoryRows): the task's `features` and
    `decode` read them as they read a Dataset (the evaluate path's), so the answers equal those of the same rows made
    a Dataset; and every row sent alone answers as it does in a batch of rows of other lengths."""
    import datasets

    from ftune.data import InMemoryRows
    from ftune.engines import TransformersEngine
    from ftune.rundir import open_run
    from ftune.tasks.base import restore_order

    run = open_run(runs[name])
    task, config, state = run.task, run.config, run.state
    rows, names = ROWS[name], [f"row {i}" for i in range(len(ROWS[name]))]
    with TransformersEngine(run, batch_size=3) as engine:
        scorer, tokenizer = engine.scorer(config, phase="predicting"), engine.tokenizer
        in_memory = task.features(config, tokenizer, InMemoryRows.from_list(rows), state, purpose="predict")
        assert isinstance(in_memory, InMemoryRows) or task.name == "translate"  # translate makes a Dataset itself
        answers = task.predict(config, scorer, tokenizer, state, rows, names)
        dataset = datasets.Dataset.from_list(rows)
        features = task.features(config, tokenizer, dataset, state, purpose="predict")
        inputs, order = task.scoring_inputs(features)
        outputs = task.decode(config, tokenizer, state, dataset, features,
                              restore_order(scorer.predict(inputs).predictions, order))
        alone = [task.predict(config, scorer, tokenizer, state, [row], [n])[0] for row, n in zip(rows, names)]
    assert_same_answers(answers, [{**row, **task.prediction_fields(out)} for row, out in zip(rows, outputs)], name)
    assert_same_answers(alone, answers, f"{name} alone")


def test_the_first_token_last_layer_predicts_as_the_whole_layer(runs, monkeypatch):
    """On a CPU a BERT classifier's forward pass in prediction computes its last layer for the first token only
    (ftune.cpu.scoring_speedups): the logits are the whole layer's within 1e-6, and the model is its own again
    afterwards; FTUNE_CPU_SPEEDUPS=0 turns it off."""
    import datasets
    import numpy as np

    from ftune.cpu import first_token
    from ftune.engines import TransformersEngine
    from ftune.rundir import open_run

    applied = []
    own = first_token.first_token_last_layer
    monkeypatch.setattr(first_token, "first_token_last_layer", lambda model: applied.append(own(model)) or applied[-1])
    run = open_run(runs["classify"])
    task, config, state = run.task, run.config, run.state
    with TransformersEngine(run, batch_size=4) as engine:
        features = task.features(config, engine.tokenizer, datasets.Dataset.from_list(ROWS["classify"]), state,
                                 purpose="predict")
        inputs, _ = task.scoring_inputs(features)
        scorer = engine.scorer(config, phase="predicting")
        fast = scorer.predict(inputs).predictions
        assert applied == [True]
        assert not any("forward" in module.__dict__ for module in engine.model.modules())   # undone
        monkeypatch.setenv("FTUNE_CPU_SPEEDUPS", "0")
        whole = scorer.predict(inputs).predictions
        assert applied == [True]
    np.testing.assert_allclose(fast, whole, rtol=0, atol=1e-6)


def test_an_onnx_export_is_served_by_onnxruntime_within_its_tolerance(runs, references, tmp_path):
    """`ftune serve EXPORT` answers as `ftune predict EXPORT` does (onnxruntime both), and an fp32 export as the run
    does within the export's verified tolerance (logits within 1e-4: probabilities within 2.1e-4, the label the same
    wherever the run's is not that close to a tie); an int8 export answers as the quantised model does."""
    from ftune.export.onnx import LOGITS_TOLERANCE

    probability_tolerance = math.expm1(2 * LOGITS_TOLERANCE) * 1.05
    rows = ROWS["classify"]
    for quantization in ("fp32", "int8"):
        folder = tmp_path / quantization
        exported = invoke("export", runs["classify"], "--format", "onnx", "--quantize", quantization,
                          "--output-dir", folder)
        assert exported.exit_code == 0, exported
        predicted = invoke("predict", folder, "--input", write_rows(tmp_path / "in.jsonl", rows), "--output",
                           tmp_path / f"{quantization}.jsonl")
        assert predicted.exit_code == 0, predicted
        server = Server(folder).wait_ready()
        try:
            served = post(server, "/v1/predict", {"inputs": rows}).json()["predictions"]
            alone = post(server, "/v1/predict", {"inputs": rows[:1]}).json()["predictions"]
        finally:
            assert server.stop() == 0, server.read_stderr()
        assert_same_answers(served, read_jsonl(tmp_path / f"{quantization}.jsonl"), quantization)
        assert_same_answers(alone, served[:1], f"{quantization} alone")
        if quantization == "fp32":
            for index, (answer, expected) in enumerate(zip(served, references["classify"])):
                assert abs(answer["score"] - expected["score"]) <= probability_tolerance, (index, answer, expected)
                if expected["score"] - 0.5 > probability_tolerance:   # two labels: a tie is a score of 0.5
                    assert answer["label"] == expected["label"], (index, answer, expected)


def test_bare_strings_extra_fields_and_settings(servers, runs, references, tmp_path):
    classify = servers["classify"]
    texts = [row["text"] for row in ROWS["classify"][:3]]
    bare = post(classify, "/v1/predict", {"inputs": texts, "model": "sentiment"}).json()["predictions"]
    assert_same_answers(bare, references["classify"][:3])
    tagged = post(classify, "/v1/predict", {"inputs": [{"text": texts[0], "id": 7}]}).json()["predictions"]
    assert_same_answers(tagged, [{"id": 7, **references["classify"][0]}])  # extra fields come back, as predict's
    # Settings are the task's predict settings by name: --num-beams is num_beams, --threshold threshold.
    rows = ROWS["summarize"][:3]
    expected = invoke("predict", runs["summarize"], "--input", write_rows(tmp_path / "in.jsonl", rows), "--num-beams",
                      "2", "--max-new-tokens", "4", "--output", tmp_path / "beams.jsonl")
    assert expected.exit_code == 0, expected
    served = post(servers["summarize"], "/v1/predict", {"inputs": rows,
                                                       "settings": {"num_beams": 2, "max_new_tokens": 4}})
    assert_same_answers(served.json()["predictions"], read_jsonl(tmp_path / "beams.jsonl"))
    multi = invoke("predict", runs["multi"], "--input", write_rows(tmp_path / "m.jsonl", ROWS["multi"][:4]),
                   "--threshold", "0.3", "--output", tmp_path / "multi.jsonl")
    assert multi.exit_code == 0, multi
    served = post(servers["multi"], "/v1/predict", {"inputs": ROWS["multi"][:4], "settings": {"threshold": 0.3}})
    assert_same_answers(served.json()["predictions"], read_jsonl(tmp_path / "multi.jsonl"))


def test_a_summarize_run_also_completes_as_ftune_generate(servers, runs, tmp_path):
    documents = [row["document"] for row in ROWS["summarize"][:3]]
    result = invoke("generate", "--model", runs["summarize"], *sum((["--prompt", d] for d in documents), []),
                    "--max-new-tokens", "6", "--no-stream", "--output", tmp_path / "generated.jsonl")
    assert result.exit_code == 0, result
    served = post(servers["summarize"], "/v1/completions", {"prompt": documents, "max_tokens": 6}).json()
    assert [c["text"] for c in served["choices"]] == [r["generation"] for r in read_jsonl(tmp_path / "generated.jsonl")]


def test_models_say_what_a_run_takes(servers):
    classify = httpx.get(servers["classify"].url + "/v1/models/sentiment").json()
    assert classify["task"] == "classify" and classify["input_fields"] == ["text"]
    assert classify["labels"] == ["negative", "positive"] and set(classify["settings"]) == {"threshold"}
    assert "POST /v1/predict" in classify["endpoints"] and "POST /v1/completions" not in classify["endpoints"]
    listed = httpx.get(servers["classify"].url + "/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["sentiment"]
    qa = httpx.get(servers["qa"].url + "/v1/models/qa").json()
    assert qa["task"] == "qa" and qa["input_fields"] == ["question", "context"] and "labels" not in qa
    summarize = httpx.get(servers["summarize"].url + "/v1/models/summarize").json()
    assert set(summarize["settings"]) == {"num_beams", "max_new_tokens"}
    assert {"POST /v1/predict", "POST /v1/completions"} <= set(summarize["endpoints"])
    assert "labels" not in httpx.get(servers["regression"].url + "/v1/models/regression").json()
    assert servers["classify"].ready_line.startswith("ftune serve: sentiment ready at http://127.0.0.1:")


def test_concurrent_requests_answer_as_one_at_a_time(servers):
    """200 requests from 16 concurrent clients, rows of every length, batched together up to 8 rows: each answer
    equals the same rows sent one at a time."""
    server = servers["classify"]
    pool = [row["text"] for row in sentiment_rows(40, seed=11)]
    rng = random.Random(5)
    requests = [rng.sample(pool, rng.randint(1, 3)) for _ in range(200)]
    alone = {text: post(server, "/v1/predict", {"inputs": [text]}).json()["predictions"][0] for text in pool}

    async def clients():
        queue: asyncio.Queue = asyncio.Queue()
        for index, texts in enumerate(requests):
            queue.put_nowait((index, texts))
        answers: dict[int, list] = {}
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            async def client_loop():
                while not queue.empty():
                    index, texts = queue.get_nowait()
                    response = await client.post("/v1/predict", json={"inputs": texts})
                    assert response.status_code == 200, response.text
                    answers[index] = response.json()["predictions"]

            await asyncio.gather(*(client_loop() for _ in range(16)))
        return answers

    answers = asyncio.run(clients())
    assert len(answers) == 200
    for index, texts in enumerate(requests):
        assert_same_answers(answers[index], [alone[text] for text in texts], f"request {index}")
    metrics = httpx.get(server.url + "/metrics").text
    assert re.search(r'ftune_requests_total\{endpoint="/v1/predict",status="200"\} (\d+)', metrics)
    assert "ftune_batch_rows_count" in metrics and "ftune_queue_rows" in metrics


def test_a_lone_request_runs_at_once_and_requests_that_queue_behind_a_batch_share_one():
    """The batcher waits for company only when there is some: a job that finds the worker idle and the queue empty
    runs without waiting --max-wait-ms (here an hour), jobs that arrive while a batch runs are batched together."""
    import threading

    from ftune.serve.batching import Batcher, Job

    batches, started, release = [], threading.Event(), threading.Event()

    def run_batch(jobs):
        batches.append([job.payload for job in jobs])
        started.set()
        release.wait()
        for job in jobs:
            job.finish(job.payload)

    batcher = Batcher(max_batch_size=2, max_wait_s=3600, max_queue=10)
    batcher.start()
    try:
        lone = batcher.submit(Job(key="k", rows=1, run_batch=run_batch, payload="lone"))
        started.wait()
        behind = [batcher.submit(Job(key="k", rows=1, run_batch=run_batch, payload=p)) for p in ("b", "c")]
        release.set()
        # An hour's wait would end these tests long before: the answers come from batches that did not wait.
        assert [job.future.result(timeout=600) for job in (lone, *behind)] == ["lone", "b", "c"]
    finally:
        release.set()
        batcher.stop()
    assert batches == [["lone"], ["b", "c"]]


# ---- bad requests -------------------------------------------------------------------------------------------

BIG = "x" * (9 * 1024 * 1024)
BAD_REQUESTS = [
    # (what, method, path, body (bytes: sent as is), status, code)
    ("malformed JSON", "POST", "/v1/predict", b'{"inputs": [', 400, "invalid_json"),
    ("empty body", "POST", "/v1/predict", b"", 400, "invalid_json"),
    ("not UTF-8", "POST", "/v1/predict", b'{"inputs": ["\xff\xfe"]}', 400, "invalid_json"),
    ("body is a list", "POST", "/v1/predict", ["x"], 422, "invalid_body"),
    ("no inputs", "POST", "/v1/predict", {"rows": ["x"]}, 422, "unknown_field"),
    ("inputs missing", "POST", "/v1/predict", {}, 422, "missing_inputs"),
    ("inputs empty", "POST", "/v1/predict", {"inputs": []}, 422, "missing_inputs"),
    ("inputs a string", "POST", "/v1/predict", {"inputs": "the cat"}, 422, "missing_inputs"),
    ("row without the field", "POST", "/v1/predict", {"inputs": [{"review": "x"}]}, 422, "missing_field"),
    ("row a number", "POST", "/v1/predict", {"inputs": [3]}, 422, "invalid_input"),
    ("row with empty text", "POST", "/v1/predict", {"inputs": [{"text": "  "}]}, 422, "invalid_input"),
    ("row with a number for text", "POST", "/v1/predict", {"inputs": [{"text": 5}]}, 422, "invalid_input"),
    ("good row then bad row", "POST", "/v1/predict", {"inputs": ["a cat", None]}, 422, "invalid_input"),
    ("settings a list", "POST", "/v1/predict", {"inputs": ["x"], "settings": [1]}, 422, "invalid_settings"),
    ("setting of another task", "POST", "/v1/predict", {"inputs": ["x"], "settings": {"num_beams": 2}}, 422,
     "unknown_setting"),
    ("setting of the wrong type", "POST", "/v1/predict", {"inputs": ["x"], "settings": {"threshold": "high"}}, 422,
     "invalid_setting"),
    ("setting true", "POST", "/v1/predict", {"inputs": ["x"], "settings": {"threshold": True}}, 422,
     "invalid_setting"),
    ("setting out of range", "POST", "/v1/predict", {"inputs": ["x"], "settings": {"threshold": 2}}, 422,
     "invalid_setting"),
    ("unknown model", "POST", "/v1/predict", {"inputs": ["x"], "model": "other"}, 404, "model_not_found"),
    ("unknown model info", "GET", "/v1/models/other", None, 404, "model_not_found"),
    ("unknown endpoint", "GET", "/v2/predict", None, 404, "unknown_endpoint"),
    ("wrong method", "GET", "/v1/predict", None, 405, "method_not_allowed"),
    ("completions of a classifier", "POST", "/v1/completions", {"prompt": "the cat"}, 400, "generation_not_served"),
    ("chat with a classifier", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]},
     400, "generation_not_served"),
    ("oversized body", "POST", "/v1/predict", {"inputs": [BIG]}, 413, "body_too_large"),
]


def test_bad_requests_are_error_objects_and_the_server_stays_up(servers, references):
    server = servers["classify"]
    good = {"inputs": [ROWS["classify"][0]]}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for what, method, path, body, status, code in BAD_REQUESTS:
            content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
            response = client.request(method, path, content=content,
                                      headers={"Content-Type": "application/json"} if content is not None else {})
            error = assert_error(response, status, code)
            if status == 422 and code in ("missing_field", "missing_inputs"):
                assert "'text'" in error["message"], (what, error)   # names what the run takes
            answer = client.post("/v1/predict", json=good)
            assert answer.status_code == 200, (what, answer.text)
            assert_same_answers(answer.json()["predictions"], references["classify"][:1], what)
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "model": "sentiment"}


def test_a_chunked_body_over_the_limit_is_413(servers):
    def chunks():
        yield b'{"inputs": ["'
        for _ in range(9):
            yield b"x" * (1024 * 1024)
        yield b'"]}'

    response = httpx.post(servers["classify"].url + "/v1/predict", content=chunks(), timeout=120)
    assert_error(response, 413, "body_too_large")


# ---- the command's own refusals --------------------------------------------------------------------------


def test_engine_vllm_without_vllm_or_a_gpu_is_one_line(runs):
    result = invoke("serve", runs["classify"], "--engine", "vllm")
    assert_usage_error(result, "vllm")
    assert "CUDA GPU" in result.stderr


def test_a_taken_port_and_bad_options_are_one_line(runs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke("serve", runs["classify"], "--port", port)
        assert_usage_error(result, f"127.0.0.1:{port}")
        assert "--port 0" in result.stderr
    assert_usage_error(invoke("serve", runs["classify"], "--max-batch-size", "0"), "--max-batch-size")
    assert_usage_error(invoke("serve", runs["classify"], "--engine", "onnx"), "--engine")
    assert_usage_error(invoke("serve", runs["classify"], "--tensor-parallel-size", "2"), "--tensor-parallel-size")
    assert_usage_error(invoke("serve", Path(runs["classify"]) / "missing"), "does not exist")


def test_the_cli_imports_no_server_at_start_up():
    check = ("import sys, ftune.cli; heavy = [m for m in ('fastapi', 'uvicorn', 'torch', 'transformers', "
             "'prometheus_client') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=str(ROOT))
    assert result.stdout.strip() == "[]", result
    helped = run_cli_subprocess("serve", "--help")
    assert helped.returncode == 0 and "--max-batch-size" in helped.stdout

