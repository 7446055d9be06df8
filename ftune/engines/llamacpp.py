"""The llama.cpp engine: a `.gguf` file run by llama.cpp itself (llama-cpp-python, the `llamacpp` extra).

`LlamaCppModel` opens a file once and offers what ftune asks of it: its tokenizer, the logits of every position of
a token sequence (GGUF export's verification scores held-out text with them), greedy continuations, and
`generate_texts` with ftune's `GenerationOptions` (`ftune generate --engine llamacpp`; a chat prompt goes through
the chat template in the file's metadata, as llama.cpp's chat completion reads it). llama-cpp-python is imported
only here, when a model is opened.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from ftune.errors import UsageError

LLAMACPP = "llamacpp"
INSTALL = "pip install 'ftune[llamacpp]' (it builds llama.cpp, which takes minutes)"


def require_llamacpp(what: str) -> None:
    """UsageError naming the install when llama-cpp-python is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise UsageError(f"{what} needs llama.cpp: {INSTALL}")


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp, with a context of `context` tokens (default: the file's own)."""

    def __init__(self, file: Path, *, context: Optional[int] = None, threads: Optional[int] = None):
        require_llamacpp("running a .gguf file with llama.cpp")
        from llama_cpp import Llama

        self.file = Path(file)
        with quiet_stderr():  # llama.cpp logs every tensor it loads to the C stderr
            self.llm = Llama(str(self.file), n_ctx=context or 0, logits_all=True, verbose=False,
                             n_threads=threads or _threads(), n_batch=512)
        self.context = self.llm.n_ctx()

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`, with the BOS/EOS the file says its tokenizer adds when `special`."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=special, special=False)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def logits(self, ids: list[int]):
        """(len(ids), vocabulary) float32 logits: what the model predicts after each prefix of `ids`."""
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[:len(ids)].copy()

    def greedy(self, prompt: list[int], count: int, *, stop: Iterable[int] = ()) -> list[int]:
        """The `count` likeliest next tokens one after another (the first ties to the lowest id, as argmax does),
        ending early after a `stop` token."""
        stop = set(stop)
        self.llm.reset()
        self.llm.eval(prompt)
        new: list[int] = []
        while len(new) < count:
            token = int(self.llm.scores[self.llm.n_tokens - 1].argmax())
            new.append(token)
            if token in stop or self.llm.n_tokens >= self.context:
                break
            self.llm.eval([token])
        return new

    def chat_prompt(self, messages: list[dict]) -> str:
        """A conversation (role/content messages) in the file's chat template, ending with the assistant's
        generation prompt."""
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise UsageError(f"--chat needs a chat template, and {self.file.name} has none in its metadata; drop "
                             "--chat")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(template, eos_token=self._token_text(self.llm.token_eos()),
                                        bos_token=self._token_text(self.llm.token_bos()))
        return formatter(messages=messages).prompt

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def prompt_ids(self, text: str, *, chat: bool) -> list[int]:
        """A prompt's token ids for generation: a chat text (from `chat_prompt`) already holds the BOS the model
        expects and its special tokens, written as text; a plain prompt gets the BOS the file says to add."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=not chat, special=chat)

    def generate_texts(self, prompts: list[str], options, *, chat: bool = False,
                       on_text: Optional[Callable[[str], None]] = None) -> list[list[str]]:
        """For each prompt, its `num_return_sequences` generated texts (without the prompt); `on_text` receives
        the pieces of text as they are generated (streaming)."""
        if options.num_beams > 1:
            raise UsageError("--num-beams is not available with --engine llamacpp; drop it or use the transformers "
                             "engine")
        results = []
        for prompt in prompts:
            text = self.chat_prompt([{"role": "user", "content": prompt}]) if chat else prompt
            ids = self.prompt_ids(text, chat=chat)
            room = self.context - options.max_new_tokens
            if room < 1:
                raise UsageError(f"--max-new-tokens {options.max_new_tokens} leaves no room for a prompt in the "
                                 f"context of {self.context} tokens; pass --max-new-tokens {self.context - 1} or less")
            ids = ids[-room:]  # a long prompt keeps its end
            texts = []
            for number in range(options.num_return_sequences):
                seed = None if options.seed is None else options.seed + number
                texts.append(self._complete(ids, options, seed, on_text if len(prompts) == 1 else None))
            results.append(texts)
        return results

    def _complete(self, ids: list[int], options, seed: Optional[int], on_text) -> str:
        kwargs = completion_settings(options, seed)
        if on_text is None:
            return self.llm.create_completion(ids, **kwargs)["choices"][0]["text"]
        pieces = []
        for chunk in self.llm.create_completion(ids, stream=True, **kwargs):
            piece = chunk["choices"][0]["text"]
            pieces.append(piece)
            on_text(piece)
        return "".join(pieces)

    def close(self) -> None:
        self.llm.close()


def completion_settings(options, seed: Optional[int]) -> dict:
    """llama.cpp's `create_completion` settings for ftune's `GenerationOptions` (and one choice's seed)."""
    sampling = options.temperature > 0
    # Greedy: temperature 0 and the one likeliest token; llama.cpp's own defaults (top-k 40, min-p 0.05) do not
    # apply, as transformers' do not in ftune.generation.
    settings = {"max_tokens": options.max_new_tokens, "temperature": options.temperature if sampling else 0.0,
                "top_p": (options.top_p or 1.0) if sampling else 1.0,
                "top_k": (options.top_k or 0) if sampling else 1, "min_p": 0.0,
                "repeat_penalty": options.repetition_penalty or 1.0}
    if seed is not None:
        settings["seed"] = seed
    return settings


def _threads() -> int:
    """llama.cpp's threads: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def quiet_stderr():
    """Silence the C library's stderr (file descriptor 2) while a model loads; Python's own errors still show."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def gguf_file_of(model: str, gguf_file: Optional[str] = None) -> Path:
    """The .gguf file `--model` names: a file, a folder with `--gguf-file`, or a GGUF export folder (its one file)."""
    from ftune.models import ModelSource

    folder = Path(model).expanduser()
    if gguf_file is None and folder.is_dir():
        found = sorted(folder.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
    source = ModelSource.parse(model, gguf_file)
    if not source.gguf:
        raise UsageError(f"--engine {LLAMACPP} runs a .gguf file, and {model} is not one; pass a .gguf file or a "
                         "GGUF export folder (`ftune export RUN --format gguf` makes one)")
    return Path(source.gguf)


def generate_with_llamacpp(model: str, gguf_file: Optional[str], prompts: list[str], options, *, chat: bool,
                           stream: bool) -> list[list[str]]:
    """`ftune generate --engine llamacpp`: each prompt's generated texts; a single prompt streamed when `stream`."""
    from ftune import console

    options.check()
    require_llamacpp(f"--engine {LLAMACPP}")
    engine = LlamaCppModel(gguf_file_of(model, gguf_file))
    try:
        on_text = (lambda piece: console.result_part(piece, end=False)) if stream else None
        texts = engine.generate_texts(prompts, options, chat=chat, on_text=on_text)
        if stream:
            console.result_part("", end=True)
        return texts
    finally:
        engine.close()
