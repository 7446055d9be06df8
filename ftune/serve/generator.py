"""ftune's own generation engine for `ftune serve`: prompts from many requests generated together by one
`model.generate` call, each choice streamed token by token and stopped on its own.

Requests with the same decoding (greedy, or sampling with the same temperature and top_p) share a batch; a
request with a `seed` that samples runs alone, after `set_seed`, so it repeats (as `ftune generate --seed`).
Decoder-only prompts are padded on the left (the attention mask covers the padding, and `generate` derives the
positions from it) and encoder-decoder prompts on the right, as `ftune generate` pads them, so greedy decoding
gives the texts `ftune generate` gives (up to exact ties between two tokens' logits, which padding may break the
other way: the float rounding of a padded batch differs in the last bits).

One `StoppingCriteria` follows every row after each step: it turns the new tokens into text, hands each choice its
new text, and marks a row finished at its end-of-sequence token (`stop`), at one of its `stop` strings (`stop`,
the string and what follows it left out), at its own `max_tokens` (`length`), or when its client has gone away;
`generate` stops once every row is finished, so no work goes on for a client that left.

transformers 5 also ships continuous batching (`generate_batch`, `init_continuous_batching`); on CPU it is far
slower than this (see docs/serving.md), so this engine batches each `generate` call itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ftune.serve.batching import Job
from ftune.serve.errors import ApiError


@dataclass(frozen=True)
class Decoding:
    """How tokens are picked: temperature 0 is greedy; `seed` makes sampling repeat."""

    temperature: float = 0.0
    top_p: Optional[float] = None
    seed: Optional[int] = None

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def batch_key(self, job_id: int) -> tuple:
        """Requests with equal keys share a `generate` call; a seeded sampling request shares it with none."""
        if not self.sampling:
            return ("generate", "greedy")
        if self.seed is not None:
            return ("generate", "seeded", job_id)
        return ("generate", "sample", self.temperature, self.top_p)


@dataclass
class Prompt:
    """A prompt as token ids, and what was done to it (a cut beginning)."""

    ids: list[int]
    notes: list[str] = field(default_factory=list)


@dataclass
class Completion:
    """One request's generation: its prompts, `n` choices for each, and where each choice's text goes.
    `emit(choice, text, finish_reason)` is called from the worker thread, with finish_reason None until the last
    piece; choice `i * n + j` is the j-th choice of prompt i."""

    prompts: list[Prompt]
    n: int
    max_tokens: int
    stop: list[str]
    decoding: Decoding
    emit: Callable[[int, str, Optional[str]], None]

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


class Generator:
    """A causal-LM or seq2seq model and its tokenizer, loaded once, generating for batches of `Completion`s."""

    def __init__(self, model, tokenizer, *, on_tokens: Callable[[int], None] = lambda n: None):
        from ftune.generation import context_length, is_encoder_decoder

        self.model, self.tokenizer = model, tokenizer
        self.encoder_decoder = is_encoder_decoder(model)
        self.context = None if self.encoder_decoder else context_length(model)
        # This tokenizer is the server's own and only the request handlers encode with it: set once, as
        # ftune generate sets them around its batches (a long prompt keeps its end).
        self.tokenizer.truncation_side = "right" if self.encoder_decoder else "left"
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.on_tokens = on_tokens          # metrics: tokens generated

    def check_max_tokens(self, max_tokens: int, param: str) -> None:
        if self.context is not None and max_tokens >= self.context:
            raise ApiError(400, f"{param} {max_tokens} is beyond the model's context of {self.context} tokens (the "
                           f"prompt needs at least one); pass {param} {self.context - 1} or less",
                           code="context_length_exceeded", param=param)

    def prompt(self, text: str, *, chat: bool, max_tokens: int) -> Prompt:
        """The prompt's token ids as `ftune generate` makes them: a chat text already holds its special tokens; a
        decoder-only prompt longer than the room `max_tokens` leaves in the context loses its beginning."""
        add_special_tokens = not chat
        if self.encoder_decoder:
            return Prompt(self.tokenizer(text, add_special_tokens=add_special_tokens, truncation=True)["input_ids"])
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        room = self.context - max_tokens if self.context is not None else None
        if room is None or len(ids) <= room:
            return Prompt(ids)
        cut = self.tokenizer(text, add_special_tokens=add_special_tokens, truncation=True,
                             max_length=room)["input_ids"]
        return Prompt(cut, [f"the prompt's {len(ids)} tokens are more than the {room} the model's context of "
                            f"{self.context} leaves beside max_tokens {max_tokens}; its beginning was cut"])

    def run_batch(self, jobs: list[Job]) -> None:
        """Generate for every choice of every job in one `generate` call; each job's future gets its number of
        generated tokens."""
        import torch
        from transformers import StoppingCriteriaList, set_seed

        from ftune.generation import GenerationOptions

        rows = [(job, index) for job in jobs for index in range(job.payload.rows)]
        first: Completion = jobs[0].payload
        options = GenerationOptions(max_new_tokens=max(job.payload.max_tokens for job in jobs),
                                    temperature=first.decoding.temperature, top_p=first.decoding.top_p)
        kwargs = options.generate_kwargs(self.model, self.tokenizer)
        eos = kwargs["eos_token_id"]
        tracker = _Tracker(self.tokenizer, rows, eos if isinstance(eos, list) else [eos], self.on_tokens)
        inputs = self._padded([job.payload.prompts[index // job.payload.n].ids for job, index in rows])
        device = next(self.model.parameters()).device
        if first.decoding.seed is not None and first.decoding.sampling:
            set_seed(first.decoding.seed)
        with torch.no_grad():
            self.model.generate(**{k: v.to(device) for k, v in inputs.items()}, **kwargs,
                                stopping_criteria=StoppingCriteriaList([tracker]))
        tracker.close()
        for job in jobs:
            job.finish(tracker.generated(job))

    def _padded(self, sequences: list[list[int]]) -> dict:
        """input_ids and attention_mask, padded as the tokenizer pads for ftune generate."""
        import torch

        pad = self.tokenizer.pad_token_id
        longest = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, ids in enumerate(sequences):
            where = slice(0, len(ids)) if self.encoder_decoder else slice(longest - len(ids), longest)
            input_ids[row, where] = torch.tensor(ids, dtype=torch.long)
            mask[row, where] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class _Tracker:
    """The stopping criterion that follows each row (see the module docstring)."""

    def __init__(self, tokenizer, rows: list[tuple[Job, int]], eos_ids: list, on_tokens: Callable[[int], None]):
        self.tokenizer, self.rows, self.on_tokens = tokenizer, rows, on_tokens
        self.eos_ids = {i for i in eos_ids if i is not None}
        self.ids: list[list[int]] = [[] for _ in rows]
        self.sent = [0] * len(rows)                 # characters of each row's text already emitted
        self.finished: list[Optional[str]] = [None] * len(rows)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        newest = input_ids[:, -1].tolist()
        counted = 0
        for row, (job, index) in enumerate(self.rows):
            if self.finished[row] is not None:
                continue
            completion: Completion = job.payload
            if job.cancelled.is_set():
                self.finished[row] = "cancelled"
                continue
            if newest[row] in self.eos_ids:
                self._finish(row, "stop")
                continue
            self.ids[row].append(newest[row])
            counted += 1
            self._advance(row, completion, at_end=len(self.ids[row]) >= completion.max_tokens)
        self.on_tokens(counted)
        return torch.tensor([reason is not None for reason in self.finished], device=input_ids.device)

    def _advance(self, row: int, completion: Completion, *, at_end: bool) -> None:
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        cut = first_stop(text, completion.stop, self.sent[row])
        if cut is not None:
            self._emit(row, text[:cut], "stop")
        elif at_end:
            self._emit(row, text, "length")
        else:
            # Hold back an unfinished character and anything that may yet become a stop string.
            ready = len(text.rstrip("\ufffd"))
            ready = min(ready, stop_free_prefix(text, completion.stop))
            if ready > self.sent[row]:
                self._emit(row, text[:ready], None)

    def _emit(self, row: int, text: str, reason: Optional[str]) -> None:
        job, index = self.rows[row]
        job.payload.emit(index, text[self.sent[row]:], reason)
        self.sent[row] = max(self.sent[row], len(text))
        if reason is not None:
            self.finished[row] = reason

    def _finish(self, row: int, reason: str) -> None:
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        job, _ = self.rows[row]
        cut = first_stop(text, job.payload.stop, self.sent[row])
        self._emit(row, text if cut is None else text[:cut], reason)

    def close(self) -> None:
        """Rows `generate` ended without this criterion deciding (every row at its end): finished by length."""
        for row, (job, _) in enumerate(self.rows):
            if self.finished[row] is None and not job.cancelled.is_set():
                self._finish(row, "length")

    def generated(self, job: Job) -> int:
        return sum(len(self.ids[row]) for row, (owner, _) in enumerate(self.rows) if owner is job)


def first_stop(text: str, stops: list[str], since: int) -> Optional[int]:
    """Where the first stop string in `text` begins (looking only where it could not have been emitted yet)."""
    found = [i for stop in stops if (i := text.find(stop, max(0, since - len(stop) + 1))) >= 0]
    return min(found) if found else None


def stop_free_prefix(text: str, stops: list[str]) -> int:
    """How much of `text` can be sent: all of it but a tail that begins some stop string."""
    for start in range(max(0, len(text) - max((len(s) for s in stops), default=0) + 1), len(text)):
        if any(stop.startswith(text[start:]) for stop in stops):
            return start
    return len(text)
