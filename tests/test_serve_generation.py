"""`ftune serve` for models that generate text: the OpenAI-compatible endpoints on a real server, through `httpx`
and the official `openai` client.

Greedy answers equal `ftune generate`'s for the same prompts and settings, batched with other requests or alone
(the prompts are checked to have no near tie between their two likeliest tokens at any step: a tie is the one
case where a padded batch may pick the other token, docs/serving.md); a seeded sampling request repeats and equals
`ftune generate --seed`; `stop`, `n`, `usage`, `finish_reason`, streaming, a long prompt cut with a note, the API
key, a client that leaves mid-stream stops its generation, a full queue is 503 with Retry-After, and SIGTERM lets
the requests in flight finish before the server exits 0.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest

from tests import tiny_models
from tests.conftest import invoke, read_jsonl, train_run
from tests.test_serve import Server, assert_error, completions_sent_at_once, stop_servers

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")
PROMPTS = ["the cat", "a dog runs quickly and the bird sleeps", "fish", "the big red house by the river is happy",
           "small green"]
MAX_TOKENS = 12
LONG = 1000     # tokens a long generation asks for (the models' contexts are 1024 and 4096)


@pytest.fixture(scope="module")
def chat_gpt2(tmp_path_factory):
    """A tiny GPT-2 whose tokenizer has a chat template, with a context of 1024 tokens."""
    from transformers import AutoTokenizer

    folder = tiny_models.build_gpt2(tmp_path_factory.mktemp("models") / "chat-gpt2", n_positions=1024)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, chat_gpt2):
    data = tmp_path_factory.mktemp("lm-data") / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": line}) + "\n" for line in tiny_models.corpus(80)))
    return train_run(tmp_path_factory, "lm", "chat-lm", "--model", chat_gpt2, "--data", data, "--max-steps", "3",
                     "--block-size", "32", "--batch-size", "8", "--precision", "fp32").path


@pytest.fixture(scope="module")
def long_gpt2(tmp_path_factory):
    """A bare model folder (not a run) with a context of 4096 tokens and no chat template."""
    return tiny_models.build_gpt2(tmp_path_factory.mktemp("models") / "long-gpt2", n_positions=4096)


@pytest.fixture(scope="module")
def servers(request, long_gpt2):
    """The lm run's server (with an API key) and the bare model's (a queue of one row); the bare model's loads while
    the run trains."""
    found = {"bare": Server(long_gpt2, "--max-queue", "1")}
    try:
        found["lm"] = Server(request.getfixturevalue("lm_run"), "--api-key", KEY, "--max-batch-size", "8",
                             "--max-wait-ms", "20")
        for server in found.values():
            server.wait_ready()
    except BaseException:
        stop_servers(found)
        raise
    yield found
    stop_servers(found)


def post(server: Server, path: str, body: dict, **kwargs):
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=300, **kwargs)


def generate(*args) -> list[dict]:
    """`ftune generate ARGS` (in this process): its rows (prompt, sequence, generation)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out.jsonl"
        result = invoke("generate", *args, "--no-stream", "--output", output)
        assert result.exit_code == 0, result
        return read_jsonl(output)


def smallest_gap(model_folder, prompts: list[str], *, chat: bool, max_new_tokens: int) -> float:
    """The smallest difference between the two likeliest tokens' logits over every greedy step of every prompt
    generated alone: above float rounding, a batch cannot pick another token."""
    import torch

    from ftune.generation import apply_chat_template, load_generation_model

    model, tokenizer = load_generation_model(str(model_folder))
    texts = apply_chat_template(tokenizer, prompts) if chat else prompts
    gaps = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        for scores in out.scores:
            top = torch.topk(scores[0], 2).values
            gaps.append(float(top[0] - top[1]))
    return min(gaps)


# ---- the answers ----------------------------------------------------------------------------------------


def test_greedy_answers_equal_ftune_generate_batched_or_alone(servers, lm_run):
    assert smallest_gap(lm_run, PROMPTS, chat=False, max_new_tokens=MAX_TOKENS) > 1e-4
    assert smallest_gap(lm_run, PROMPTS[:2], chat=True, max_new_tokens=MAX_TOKENS) > 1e-4
    expected = [row["generation"] for row in generate("--model", lm_run, *sum((["--prompt", p] for p in PROMPTS), []),
                                                     "--max-new-tokens", MAX_TOKENS)]
    server = servers["lm"]
    together = post(server, "/v1/completions", {"prompt": PROMPTS, "max_tokens": MAX_TOKENS}).json()
    assert [c["text"] for c in together["choices"]] == expected
    # One request per prompt, sent at once: they share batches of other sizes and paddings.
    answers = completions_sent_at_once(lambda body: post(server, "/v1/completions", body), PROMPTS, MAX_TOKENS)
    assert [a["choices"][0]["text"] for a in answers] == expected
    first = answers[0]
    assert first["object"] == "text_completion" and first["choices"][0]["finish_reason"] in ("length", "stop")
    from transformers import AutoTokenizer

    prompt_tokens = len(AutoTokenizer.from_pretrained(lm_run)(PROMPTS[0])["input_ids"])
    assert first["usage"]["prompt_tokens"] == prompt_tokens
    assert first["usage"]["total_tokens"] == prompt_tokens + first["usage"]["completion_tokens"]
    chat = [row["generation"] for row in generate("--model", lm_run, "--chat", "--prompt", PROMPTS[0], "--prompt",
                                                 PROMPTS[1], "--max-new-tokens", MAX_TOKENS)]
    for prompt, text in zip(PROMPTS[:2], chat):
        answer = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}],
                                                      "max_tokens": MAX_TOKENS}).json()
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": text}


def test_the_openai_client_works_unchanged(servers, lm_run):
    server = servers["lm"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["chat-lm"]
    expected = generate("--model", lm_run, "--chat", "--prompt", PROMPTS[1], "--max-new-tokens", MAX_TOKENS)
    chat = client.chat.completions.create(model="chat-lm", messages=[{"role": "user", "content": PROMPTS[1]}],
                                          max_tokens=MAX_TOKENS)
    assert chat.choices[0].message.content == expected[0]["generation"]
    assert chat.usage.completion_tokens <= MAX_TOKENS
    stream = client.chat.completions.create(model="chat-lm", messages=[{"role": "user", "content": PROMPTS[1]}],
                                            max_tokens=MAX_TOKENS, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[0]["generation"]
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    plain = generate("--model", lm_run, "--prompt", PROMPTS[3], "--max-new-tokens", MAX_TOKENS)[0]["generation"]
    completion = client.completions.create(model="chat-lm", prompt=PROMPTS[3], max_tokens=MAX_TOKENS)
    assert completion.choices[0].text == plain
    streamed = list(client.completions.create(model="chat-lm", prompt=PROMPTS[3], max_tokens=MAX_TOKENS, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain
    assert streamed[-1].usage.completion_tokens == completion.usage.completion_tokens
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="another", prompt="x", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()


def test_stop_n_seed_and_finish_reasons(servers, lm_run):
    server = servers["lm"]
    whole = post(server, "/v1/completions", {"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS}).json()["choices"][0]
    text = whole["text"]
    assert whole["finish_reason"] == "length" and len(text) > 4
    stop = text[2:4]
    stopped = post(server, "/v1/completions", {"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS,
                                               "stop": [stop, "never seen"]}).json()["choices"][0]
    assert stopped == {**stopped, "text": text[:text.index(stop)], "finish_reason": "stop"}
    sampled = {"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0.9, "seed": 7, "n": 3}
    first, second = (post(server, "/v1/completions", sampled).json() for _ in range(2))
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]
    expected = generate("--model", lm_run, "--prompt", PROMPTS[0], "--max-new-tokens", "6", "--temperature", "0.9",
                        "--seed", "7", "--num-return-sequences", "3")
    assert [c["text"] for c in first["choices"]] == [row["generation"] for row in expected]
    assert first["usage"]["completion_tokens"] <= 18


def test_a_long_prompt_is_cut_at_its_beginning_with_a_note(servers, lm_run):
    prompt = " ".join(["the cat runs"] * 400)
    expected = generate("--model", lm_run, "--prompt", prompt, "--max-new-tokens", "8")[0]["generation"]
    answer = post(server := servers["lm"], "/v1/completions", {"prompt": prompt, "max_tokens": 8}).json()
    assert answer["choices"][0]["text"] == expected
    assert "beginning was cut" in answer["notes"][0]
    assert answer["usage"]["prompt_tokens"] == 1024 - 8
    assert_error(post(server, "/v1/completions", {"prompt": "x", "max_tokens": 1024}), 400, "context_length_exceeded")


def generated_tokens(server: Server, headers=None) -> float:
    text = httpx.get(server.url + "/metrics", headers=headers or AUTH).text
    return float(re.search(r"^ftune_generated_tokens_total (\S+)$", text, re.M).group(1))


def test_a_client_that_leaves_mid_stream_stops_its_generation(servers):
    server = servers["lm"]
    body = {"prompt": PROMPTS[2], "max_tokens": LONG}
    before = generated_tokens(server)
    whole = post(server, "/v1/completions", body).json()
    assert whole["usage"]["completion_tokens"] == LONG  # it runs to its length when nobody leaves
    assert generated_tokens(server) - before == LONG
    before = generated_tokens(server)
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break   # the first piece of text: leave
    after = post(server, "/v1/completions", {"prompt": "fish", "max_tokens": 1}).json()  # queued behind it
    assert after["usage"]["completion_tokens"] == 1
    assert generated_tokens(server) - before < LONG / 2


BAD_GENERATION = [
    # (what, path, body, status, code)
    ("no prompt", "/v1/completions", {"max_tokens": 4}, 400, "invalid_prompt"),
    ("token ids for a prompt", "/v1/completions", {"prompt": [1, 2, 3]}, 400, "invalid_prompt"),
    ("empty prompt", "/v1/completions", {"prompt": ""}, 400, "invalid_prompt"),
    ("max_tokens 0", "/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "invalid_value"),
    ("max_tokens a text", "/v1/completions", {"prompt": "x", "max_tokens": "4"}, 400, "invalid_value"),
    ("max_tokens beyond the context", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}, 400, "context_length_exceeded"),
    ("negative temperature", "/v1/completions", {"prompt": "x", "temperature": -1}, 400, "invalid_value"),
    ("top_p 0", "/v1/completions", {"prompt": "x", "top_p": 0}, 400, "invalid_value"),
    ("n 0", "/v1/completions", {"prompt": "x", "n": 0}, 400, "invalid_value"),
    ("n 2 greedy", "/v1/completions", {"prompt": "x", "n": 2}, 400, "invalid_value"),
    ("five stop strings", "/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400,
     "invalid_value"),
    ("negative seed", "/v1/completions", {"prompt": "x", "seed": -1}, 400, "invalid_value"),
    ("stream a text", "/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "invalid_type"),
    ("logprobs", "/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "unsupported"),
    ("tools", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "x"}]},
     400, "unsupported"),
    ("no messages", "/v1/chat/completions", {"messages": []}, 400, "invalid_messages"),
    ("a message without a role", "/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "invalid_messages"),
    ("a message with an image", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "invalid_messages"),
    ("unknown model", "/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model_not_found"),
    ("predict on an lm run", "/v1/predict", {"inputs": ["x"]}, 400, "predict_not_served"),
]


def test_bad_generation_requests_are_error_objects_and_the_server_stays_up(servers):
    server = servers["lm"]
    good = {"prompt": "the cat", "max_tokens": 3}
    expected = post(server, "/v1/completions", good).json()["choices"][0]["text"]
    for what, path, body, status, code in BAD_GENERATION:
        assert_error(post(server, path, body), status, code)
        answer = post(server, "/v1/completions", good)
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == expected, what


def test_the_api_key_guards_every_endpoint_but_health(servers):
    url = servers["lm"].url
    assert httpx.get(url + "/health").status_code == 200
    for path in ("/metrics", "/v1/models", "/v1/models/chat-lm"):
        assert_error(httpx.get(url + path), 401, "invalid_api_key")
        assert httpx.get(url + path, headers=AUTH).status_code == 200
    assert_error(httpx.post(url + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer no"}),
                 401, "invalid_api_key")


def test_a_bare_model_a_full_queue_and_sigterm_drain(servers):
    """A model folder gets the completion endpoints; a queue full of waiting rows answers 503 with Retry-After; on
    SIGTERM the requests in flight finish (a stream to its end, a queued request answered) and the server exits 0."""
    server = servers["bare"]
    assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["long-gpt2"]
    assert_error(httpx.post(server.url + "/v1/predict", json={"inputs": ["x"]}), 400, "predict_not_served")
    assert_error(httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}),
                 400, "no_chat_template")
    # A prompt this model continues to the end of max_tokens (some meet the end-of-text token early); the stream's
    # finish_reason below checks it.
    long_body = {"prompt": "the dog", "max_tokens": 3 * LONG, "stream": True}
    queued: dict = {}
    streamed = []

    def queue_one():
        queued["response"] = httpx.post(server.url + "/v1/completions", json={"prompt": "fish", "max_tokens": 2},
                                        timeout=300)

    with httpx.stream("POST", server.url + "/v1/completions", json=long_body, timeout=300) as response:
        lines = response.iter_lines()
        streamed.append(next(line for line in lines if line.startswith("data: {")))  # generating now
        waiting = threading.Thread(target=queue_one)
        waiting.start()
        while "ftune_queue_rows 1.0" not in httpx.get(server.url + "/metrics").text:
            assert waiting.is_alive(), "the stream ended before the second request could wait behind it"
            time.sleep(0.05)
        refused = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert_error(refused, 503, "overloaded")
        assert refused.headers["Retry-After"] == "1"
        server.process.send_signal(signal.SIGTERM)
        streamed += [line for line in lines if line]
    waiting.join()
    assert streamed[-1] == "data: [DONE]"
    finish = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in streamed[:-1]]
    assert finish[-1] == "length"   # the stream ran to its end
    assert queued["response"].status_code == 200
    assert server.process.wait(timeout=300) == 0


def test_the_vllm_command_line(lm_run):
    """What --engine vllm would run (vLLM itself needs a GPU: its refusal is tested in test_serve.py)."""
    from ftune.serve import ServeOptions
    from ftune.serve.vllm import vllm_command

    command = vllm_command(ServeOptions(source=str(lm_run), port=8123, api_key=KEY, engine="vllm",
                                        tensor_parallel_size=2))
    assert command == ["vllm", "serve", str(lm_run.resolve()), "--host", "127.0.0.1", "--port", "8123",
                       "--served-model-name", "chat-lm", "--api-key", KEY, "--tensor-parallel-size", "2"]
