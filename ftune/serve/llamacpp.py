"""`ftune serve MODEL.gguf --engine llamacpp`: a .gguf file (or a GGUF export folder, which holds one) run by
llama.cpp behind the OpenAI-compatible endpoints of ftune's own server — its app, queue, errors and metrics
(ftune.serve.server, ftune.serve.openai_api) — with `LlamaCppGenerator` in the place of the transformers generator.

A greedy answer equals `ftune generate --engine llamacpp`'s: the prompt's tokens, the chat template (the file's
own), the long-prompt cut and the decoding settings are ftune.engines.llamacpp's, and each choice is one llama.cpp
`create_completion`, as there. llama.cpp holds one sequence at a time, so the queue hands this engine one request at
a time (batches of one request; its prompts and choices run one after another). Before each prompt the model's
context is cleared: llama.cpp would otherwise reuse the part of the previous request's tokens that the new prompt
starts with, computed in other batch shapes, and an answer would depend on the requests served before it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

from ftune.serve.batching import Job
from ftune.serve.generator import Completion, Generator, Prompt, first_stop, stop_free_prefix


def serve(options) -> None:
    from ftune.engines.llamacpp import LLAMACPP, LlamaCppModel, gguf_file_of, require_llamacpp
    from ftune.errors import UsageError
    from ftune.serve import server
    from ftune.serve.openai_api import CompletionsService

    require_llamacpp(f"--engine {LLAMACPP}")
    file = gguf_file_of(options.source)
    sock = server.bind(options.host, options.port)
    with contextlib.closing(sock):
        try:
            engine = LlamaCppModel(file)
        except ValueError as exc:  # llama-cpp-python's word for a file llama.cpp cannot load
            raise UsageError(f"llama.cpp cannot load {file} ({exc}); pass a .gguf file llama.cpp reads (`ftune export "
                             "RUN --format gguf` makes one)") from None
        try:
            served = server.new_served(options, options.model_name or file.stem, no_predict=server.NO_PREDICT_MODEL,
                                       max_batch_size=1)
            generator = LlamaCppGenerator(engine, on_tokens=served.metrics.generated_tokens.inc)
            served.completions = CompletionsService(generator, served.batcher, served.model_name)
            server.run_server(served, sock, options)
        finally:
            engine.close()


class LlamaCppGenerator:
    """What the completion endpoints ask of a generator (`prompt`, `check_max_tokens`, `has_chat_template`,
    `tokenizer`, `run_batch`), over one `LlamaCppModel`."""

    # The same refusal as ftune's own generator: it reads only `context`.
    check_max_tokens = Generator.check_max_tokens

    def __init__(self, engine, *, on_tokens: Callable[[int], None] = lambda n: None):
        import llama_cpp

        self.engine, self.on_tokens = engine, on_tokens
        self.context = engine.context
        self.tokenizer = FileChatTemplate(engine)
        self.has_chat_template = self.tokenizer.chat_template is not None
        vocab = llama_cpp.llama_model_get_vocab(engine.llm.model)
        self._is_end = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._sampled: list[int] = []
        self._watch_sampling()

    def _watch_sampling(self) -> None:
        """Record every token llama.cpp samples: its completions stream text, not tokens, and `usage` counts tokens
        (those before an end-of-generation token, as ftune's own generator counts them). `create_completion` samples
        through the model's `generate`; tests/test_serve_llamacpp.py checks the counts, so a llama-cpp-python that
        stops doing so fails there."""
        sample_tokens = self.engine.llm.generate

        def watched(*args, **kwargs):
            tokens = sample_tokens(*args, **kwargs)
            try:
                for token in tokens:
                    self._sampled.append(token)
                    if not self._is_end(token):
                        self.on_tokens(1)
                    yield token
            finally:
                tokens.close()

        self.engine.llm.generate = watched

    def prompt(self, text: str, *, chat: bool, max_tokens: int) -> Prompt:
        """The prompt's token ids as `ftune generate --engine llamacpp` makes them; a prompt longer than the room
        `max_tokens` leaves in the context loses its beginning."""
        ids = self.engine.prompt_ids(text, chat=chat)
        room = self.context - max_tokens
        if len(ids) <= room:
            return Prompt(ids)
        return Prompt(ids[-room:], [f"the prompt's {len(ids)} tokens are more than the {room} the model's context "
                                    f"of {self.context} leaves beside max_tokens {max_tokens}; its beginning was cut"])

    def run_batch(self, jobs: list[Job]) -> None:
        """Each job's choices one after another; its future gets the number of tokens generated."""
        for job in jobs:
            completion: Completion = job.payload
            generated = 0
            for choice in range(completion.rows):
                if job.cancelled.is_set():
                    break
                number = choice % completion.n
                if number == 0:  # a new prompt: nothing carried over (see the module docstring)
                    self.engine.llm.reset()
                seed = None if completion.decoding.seed is None else completion.decoding.seed + number
                generated += self._complete(job, choice, seed)
            job.finish(generated)

    def _complete(self, job: Job, choice: int, seed: Optional[int]) -> int:
        """One choice streamed to its request; the tokens it generated. Seeds go as in `ftune generate --seed S
        --num-return-sequences N`: S, S+1, ... for a prompt's choices."""
        from ftune.engines.llamacpp import completion_settings
        from ftune.generation import GenerationOptions

        completion: Completion = job.payload
        decoding = completion.decoding
        options = GenerationOptions(max_new_tokens=completion.max_tokens, temperature=decoding.temperature,
                                    top_p=decoding.top_p)
        ids = completion.prompts[choice // completion.n].ids
        self._sampled.clear()
        stream = self.engine.llm.create_completion(ids, stream=True, **completion_settings(options, seed))
        text, sent, reason = "", 0, None
        try:
            for chunk in stream:
                if job.cancelled.is_set():
                    return self._generated()
                text += chunk["choices"][0]["text"]
                cut = first_stop(text, completion.stop, sent)
                if cut is not None:
                    text, reason = text[:cut], "stop"
                    break
                reason = chunk["choices"][0]["finish_reason"]
                if reason is not None:
                    break
                # Hold back the end of the text while it may yet become a stop string.
                ready = stop_free_prefix(text, completion.stop)
                if ready > sent:
                    completion.emit(choice, text[sent:ready], None)
                    sent = ready
        finally:
            stream.close()
        completion.emit(choice, text[sent:], reason or "length")
        return self._generated()

    def _generated(self) -> int:
        return sum(1 for token in self._sampled if not self._is_end(token))


class FileChatTemplate:
    """The chat template in the file's metadata, where the completion endpoints look for a tokenizer's (they ask
    for the text of a conversation with the assistant's generation prompt, which `chat_prompt` gives)."""

    def __init__(self, engine):
        self.engine = engine
        self.chat_template = engine.llm.metadata.get("tokenizer.chat_template") or None

    def apply_chat_template(self, messages: list[dict], *, tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        return self.engine.chat_prompt(messages)
