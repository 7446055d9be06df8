"""Text generation from causal-LM and seq2seq models: `ftune generate`.

`generate_texts` is the reusable core: a loaded model, its tokenizer, prompts and `GenerationOptions` in,
generated texts out. It batches prompts (left-padded for decoder-only models, so every prompt ends right
where generation starts), strips the prompt from decoder-only outputs and stops at EOS.
`load_generation_model` picks AutoModelForSeq2SeqLM for encoder-decoder configs and AutoModelForCausalLM
otherwise, and reads ftune runs (full or LoRA), merged folders, Hub ids and GGUF files alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ftune.errors import UsageError


@dataclass
class GenerationOptions:
    """Decoding settings; temperature 0 means greedy (deterministic) decoding, above 0 sampling."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    num_beams: int = 1
    num_return_sequences: int = 1
    seed: Optional[int] = None

    def check(self) -> None:
        """Raise UsageError naming every setting out of its range (NaN and infinity too) at once."""
        problems = [f"{flag} {value!r}: {why}" for flag, value, why in self._range_problems()]
        if problems:
            raise UsageError(f"invalid generation settings: {'; '.join(problems)}")
        if self.num_return_sequences > 1 and self.temperature <= 0 and self.num_beams < self.num_return_sequences:
            raise UsageError(f"--num-return-sequences {self.num_return_sequences} needs sampling (--temperature "
                             f"above 0) or --num-beams {self.num_return_sequences} or more")

    def _range_problems(self):
        """(flag, value, what it must be) for each setting out of its range."""
        whole = [("--max-new-tokens", self.max_new_tokens, 1), ("--num-beams", self.num_beams, 1),
                 ("--num-return-sequences", self.num_return_sequences, 1), ("--top-k", self.top_k, 0),
                 ("--seed", self.seed, 0)]
        for flag, value, least in whole:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                yield flag, value, f"must be a whole number, {least} or more"
        if not _finite(self.temperature) or self.temperature < 0:
            yield "--temperature", self.temperature, "must be a finite number, 0 (greedy) or more"
        if self.top_p is not None and (not _finite(self.top_p) or not 0 < self.top_p <= 1):
            yield "--top-p", self.top_p, "must be above 0 and at most 1"
        if self.repetition_penalty is not None and (not _finite(self.repetition_penalty)
                                                    or self.repetition_penalty <= 0):
            yield "--repetition-penalty", self.repetition_penalty, "must be a finite number above 0 (1: no penalty)"

    def generate_kwargs(self, model, tokenizer) -> dict:
        sampling = self.temperature > 0
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": sampling, "num_beams": self.num_beams,
                  "num_return_sequences": self.num_return_sequences,
                  "pad_token_id": tokenizer.pad_token_id,
                  "eos_token_id": model.generation_config.eos_token_id or tokenizer.eos_token_id}
        if sampling:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            # Greedy or beam search: the model's own sampling defaults (some ship temperature/top_p) do not apply.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def generate_texts(model, tokenizer, prompts: list[str], options: GenerationOptions, *, batch_size: int = 8,
                   chat: bool = False, streamer=None) -> list[list[str]]:
    """For each prompt, its `num_return_sequences` generated texts (without the prompt)."""
    import torch
    from transformers import set_seed

    options.check()
    if chat:
        prompts = apply_chat_template(tokenizer, prompts)
    encoder_decoder = is_encoder_decoder(model)
    device = next(model.parameters()).device
    kwargs = options.generate_kwargs(model, tokenizer)
    if options.seed is not None:
        set_seed(options.seed)  # once, before the first batch: the same prompts and seed give the same texts
    room = None if encoder_decoder else prompt_room(model, tokenizer, prompts, options, chat=chat)
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    tokenizer.truncation_side = "right" if encoder_decoder else "left"  # a long prompt keeps its end
    results: list[list[str]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            # A chat template already put in the special tokens (BOS) the model expects.
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not chat,
                                truncation=encoder_decoder or room is not None, max_length=room).to(device)
            with torch.no_grad():
                output = model.generate(**encoded, **kwargs, streamer=streamer)
            new_tokens = output if encoder_decoder else output[:, encoded["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            n = options.num_return_sequences
            results += [texts[i * n:(i + 1) * n] for i in range(len(batch))]
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    return results


def prompt_room(model, tokenizer, prompts: list[str], options: GenerationOptions, *, chat: bool) -> Optional[int]:
    """For a decoder-only model: the most prompt tokens that leave room for --max-new-tokens in its context (None
    when every prompt fits). Longer prompts lose their beginning, with a note; no room at all is an error."""
    from ftune import console

    context = context_length(model)
    if context is None:
        return None
    room = context - options.max_new_tokens
    if room < 1:
        raise UsageError(f"--max-new-tokens {options.max_new_tokens} leaves no room for a prompt in the model's "
                         f"context of {context} tokens; pass --max-new-tokens {context - 1} or less")
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=not chat)["input_ids"]]
    cut = sum(n > room for n in lengths)
    if not cut:
        return None
    console.note(f"{cut} prompt(s) are longer than the {room} tokens the model's context of {context} leaves beside "
                 f"--max-new-tokens {options.max_new_tokens}; their beginning was cut")
    return room


def context_length(model) -> Optional[int]:
    """The most tokens a decoder-only model's positions take (prompt and generation together), if it says."""
    return next((v for k in ("max_position_embeddings", "n_positions", "n_ctx")
                 if isinstance(v := getattr(model.config, k, None), int) and v > 0), None)


def console_streamer(tokenizer):
    """A transformers TextStreamer that prints the new text through ftune.console as it is generated."""
    from transformers import TextStreamer

    from ftune import console

    class ConsoleStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            console.result_part(text, end=stream_end)

    return ConsoleStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def apply_chat_template(tokenizer, prompts: list[str]) -> list[str]:
    """Each prompt as one user turn of a conversation, followed by the assistant's generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("--chat needs a tokenizer with a chat template, and this one has none; drop --chat")
    return [chat_text(tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def chat_text(tokenizer, messages: list[dict]) -> str:
    """A conversation in the tokenizer's chat template, ending with the assistant's generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_generation_model(source: str, gguf_file: Optional[str] = None):
    """(model, tokenizer) in eval mode: an ftune run (full or base + LoRA adapter) whose task generates text, a
    model folder or Hub id (seq2seq when its config is encoder-decoder, else causal LM), or a GGUF file."""
    import torch

    from ftune.models import ModelSource, load_run_model, load_run_tokenizer
    from ftune.rundir import CONFIG_FILE, open_run

    if (Path(source).expanduser() / CONFIG_FILE).is_file():
        run = open_run(Path(source).expanduser())
        if not run.task.generates_text:
            raise UsageError(f"run {source} is a {run.task.name} run, which does not generate text; use ftune "
                             "predict")
        model, tokenizer = load_run_model(run), load_run_tokenizer(run)
    else:
        model_source = ModelSource.parse(source, gguf_file)
        encoder_decoder = bool(getattr(model_source.load_config(), "is_encoder_decoder", False))
        auto_class = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
        model, tokenizer = model_source.load_model(auto_class), model_source.load_tokenizer()
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer


def read_prompts(prompts: list[str], prompts_file: Optional[Path]) -> list[str]:
    """--prompt values, or a file of prompts: one per line (.txt), or JSON lines with a "prompt" field."""
    if prompts and prompts_file:
        raise UsageError("give either --prompt or --prompts-file, not both")
    if prompts_file is None:
        if not prompts:
            raise UsageError("nothing to generate from: pass --prompt TEXT or --prompts-file FILE")
        empty = next((i for i, p in enumerate(prompts, 1) if not p.strip()), None)
        if empty is not None:
            raise UsageError(f"--prompt number {empty} is empty; give the text to continue")
        return list(prompts)
    from ftune.data import require_regular

    require_regular(prompts_file, "--prompts-file", "a .txt or .jsonl file")
    if not prompts_file.is_file():
        raise UsageError(f"--prompts-file {prompts_file} does not exist; pass a .txt or .jsonl file")
    try:
        text = prompts_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--prompts-file {prompts_file} is not UTF-8 text; convert it (e.g. with iconv)") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if prompts_file.suffix.lower() not in (".jsonl", ".json"):
        found = [line for _, line in lines]
    else:
        found = []
        for number, line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{prompts_file} line {number} is not JSON; write one object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise UsageError(f"{prompts_file} line {number} has no \"prompt\" text; write "
                                 "{\"prompt\": \"...\"} per line")
            found.append(row["prompt"])
    if not found:
        raise UsageError(f"--prompts-file {prompts_file} holds no prompts")
    return found
