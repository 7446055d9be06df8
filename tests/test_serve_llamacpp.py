"""`ftune serve --engine llamacpp`: a tiny Llama-shaped lm run (a ChatML template) exported with `ftune export
--format gguf`, served by llama.cpp on a free port, checked with `httpx` and the official `openai` client against
`ftune generate --engine llamacpp`: greedy chat and completions equal its texts (streamed or whole, a request alone or
among others), `usage` counts llama.cpp's own tokens, `stop` cuts the text, a seeded sampling request repeats and
equals `ftune generate --seed`, `/v1/predict` is a 400; a missing llama.cpp is one line and exit 2.

The model is trained a few steps so that its greedy text is made of whole characters: an untrained one picks stray
bytes of multi-byte characters, which llama-cpp-python keeps generating past `max_tokens` to complete.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests import tiny_models
from tests.conftest import invoke, read_jsonl, train_run
from tests.test_errors import assert_usage_error
from tests.test_serve import Server, assert_error, completions_sent_at_once

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("gguf", reason="pip install 'ftune[gguf]'")
needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama.cpp is not installed: pip install 'ftune[llamacpp]'")

PROMPTS = ["the cat", "a dog runs quickly and the bird", "fish"]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def gguf_export(tmp_path_factory):
    """The GGUF export folder of a tiny Llama lm run (ChatML template), and its .gguf file."""
    from tests.test_export_gguf import LM_FAST, build_llama

    model = build_llama(tmp_path_factory.mktemp("models") / "tiny-llama")
    data = tmp_path_factory.mktemp("lm-data") / "text.txt"
    data.write_text("\n".join(tiny_models.corpus(120, seed=3)) + "\n")
    run = train_run(tmp_path_factory, "lm", "chat-llama", "--model", model, "--data", data, *LM_FAST).path
    result = invoke("export", run, "--format", "gguf")
    assert result.exit_code == 0, result
    folder = run / "exports" / "gguf"
    return folder, next(folder.glob("*.gguf"))


@pytest.fixture(scope="module")
def server(gguf_export):
    found = Server(gguf_export[0], "--engine", "llamacpp").wait_ready()
    yield found
    assert found.stop() == 0


@pytest.fixture(scope="module")
def llama(gguf_export):
    """The file opened in this process, for the counts the server's answers are checked against."""
    from ftune.engines.llamacpp import LlamaCppModel

    engine = LlamaCppModel(gguf_export[1])
    yield engine
    engine.close()


def generate(folder, *args) -> list[str]:
    """`ftune generate --engine llamacpp` (in this process): its texts, in order."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "out.jsonl"
        result = invoke("generate", "--model", folder, "--engine", "llamacpp", "--max-new-tokens", MAX_TOKENS,
                        "--output", output, *args)
        assert result.exit_code == 0, result
        return [row["generation"] for row in read_jsonl(output)]


def post(server: Server, path: str, body: dict):
    return httpx.post(server.url + path, json=body, timeout=300)


def greedy_count(llama, prompt: str, *, chat: bool) -> int:
    """Tokens llama.cpp generates greedily for the prompt before its end-of-generation token (at most MAX_TOKENS)."""
    import llama_cpp

    text = llama.chat_prompt([{"role": "user", "content": prompt}]) if chat else prompt
    llama.llm.reset()
    vocab = llama_cpp.llama_model_get_vocab(llama.llm.model)
    tokens = llama.greedy(llama.prompt_ids(text, chat=chat), MAX_TOKENS)
    return next((i for i, t in enumerate(tokens) if llama_cpp.llama_vocab_is_eog(vocab, t)), len(tokens))


@needs_llamacpp
def test_greedy_answers_equal_ftune_generate_with_llama_cpp(server, gguf_export, llama):
    folder, file = gguf_export
    assert f"{file.stem} ready at" in server.ready_line and "POST /v1/chat/completions" in server.ready_line
    expected = [generate(folder, "--prompt", prompt)[0] for prompt in PROMPTS]
    assert all(text.isprintable() and text.strip() for text in expected), expected  # whole characters, not garbage
    answers = completions_sent_at_once(lambda body: post(server, "/v1/completions", body), PROMPTS, MAX_TOKENS)
    assert [a["choices"][0]["text"] for a in answers] == expected
    together = post(server, "/v1/completions", {"prompt": PROMPTS, "max_tokens": MAX_TOKENS}).json()
    assert [c["text"] for c in together["choices"]] == expected
    for prompt, answer in zip(PROMPTS, answers):
        generated = greedy_count(llama, prompt, chat=False)
        assert answer["usage"] == {"prompt_tokens": len(llama.prompt_ids(prompt, chat=False)),
                                   "completion_tokens": generated, "total_tokens": answer["usage"]["total_tokens"]}
        assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + generated
        assert answer["choices"][0]["finish_reason"] == ("length" if generated == MAX_TOKENS else "stop")
    chat = generate(folder, "--chat", "--prompt", PROMPTS[1])[0]
    answer = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[1]}],
                                                   "max_tokens": MAX_TOKENS}).json()
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": chat}
    assert answer["usage"]["completion_tokens"] == greedy_count(llama, PROMPTS[1], chat=True)


@needs_llamacpp
def test_the_openai_client_chats_completes_and_streams(server, gguf_export):
    folder, file = gguf_export
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [file.stem]
    chat_text = generate(folder, "--chat", "--prompt", PROMPTS[0])[0]
    messages = [{"role": "user", "content": PROMPTS[0]}]
    chat = client.chat.completions.create(model=file.stem, messages=messages, max_tokens=MAX_TOKENS)
    assert chat.choices[0].message.content == chat_text
    chunks = list(client.chat.completions.create(model=file.stem, messages=messages, max_tokens=MAX_TOKENS,
                                                  stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat_text
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    plain = generate(folder, "--prompt", PROMPTS[2])[0]
    completion = client.completions.create(model=file.stem, prompt=PROMPTS[2], max_tokens=MAX_TOKENS)
    assert completion.choices[0].text == plain
    streamed = list(client.completions.create(model=file.stem, prompt=PROMPTS[2], max_tokens=MAX_TOKENS, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain
    assert streamed[-1].usage == completion.usage


@needs_llamacpp
def test_stop_seed_and_what_is_not_served(server, gguf_export):
    folder, _ = gguf_export

    def streamed(body: dict) -> list[dict]:
        events = post(server, "/v1/completions", {**body, "stream": True}).text.splitlines()
        return [json.loads(line[6:])["choices"][0] for line in events if line.startswith("data: {")]

    pieces = [c["text"] for c in streamed({"prompt": PROMPTS[0], "max_tokens": MAX_TOKENS}) if c["text"]]
    text = "".join(pieces)
    # A stop string across two streamed pieces: the first piece must be held back until it is known.
    boundary = len(pieces[0]) + len(pieces[1])
    assert len(text) > boundary
    stop = text[boundary - 1:boundary + 1]
    for stream in (False, True):
        body = {"prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "stop": [stop, "never seen"]}
        if stream:
            chunks = streamed(body)
            stopped = {"text": "".join(c["text"] for c in chunks), "finish_reason": chunks[-1]["finish_reason"]}
        else:
            stopped = post(server, "/v1/completions", body).json()["choices"][0]
        assert stopped["text"] == text[:text.index(stop)] and stopped["finish_reason"] == "stop"
    sampled = {"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0.9, "seed": 7, "n": 2}
    first, second = (post(server, "/v1/completions", sampled).json() for _ in range(2))
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]
    assert [c["text"] for c in first["choices"]] == generate(folder, "--prompt", PROMPTS[0], "--max-new-tokens", "6",
                                                            "--temperature", "0.9", "--seed", "7",
                                                            "--num-return-sequences", "2")
    assert_error(post(server, "/v1/predict", {"inputs": ["x"]}), 400, "predict_not_served")
    assert_error(post(server, "/v1/completions", {"prompt": "x", "max_tokens": 256}), 400, "context_length_exceeded")
    assert post(server, "/v1/completions", {"prompt": "x", "max_tokens": 2}).status_code == 200


def test_without_llama_cpp_or_a_gguf_file_it_refuses_in_one_line(monkeypatch, tiny_gpt2):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert_usage_error(invoke("serve", "model.gguf", "--engine", "llamacpp", "--port", "0"),
                       "pip install 'ftune[llamacpp]'")
    monkeypatch.undo()
    if real("llama_cpp") is not None:
        assert_usage_error(invoke("serve", tiny_gpt2, "--engine", "llamacpp", "--port", "0"), "is not one")
