"""Extractive QA's two halves around the model: contexts cut into token windows, and answer spans chosen
from the windows' start/end logits and mapped back to the context's characters.

transformers 5 has no question-answering pipeline, so this is ftune's own code, shared by the evaluations
during training, `ftune eval` and `ftune predict` (all through the task's `decode`). It needs numpy only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ftune.errors import UsageError

# Window columns that describe where a window came from; the model does not take them.
WINDOW_INFO_COLUMNS = ("example_index", "cls_index", "offset_mapping")


@dataclass(frozen=True)
class SpanSettings:
    """How spans are chosen (the run's --n-best, --max-answer-length, --null-threshold and its data's version)."""

    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0
    version_2: bool = False


def require_fast_tokenizer(tokenizer, model_name: str = "the model") -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{model_name} has no fast tokenizer (tokenizer.json); extractive QA maps answers through "
                         "the token offsets only a fast tokenizer gives: choose a model that ships one")


def encode_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], *, max_length: int,
                   doc_stride: int, answer_spans: Optional[Sequence[Optional[tuple[int, int]]]] = None) -> dict:
    """Tokenize question + context pairs, a long context cut into windows overlapping by `doc_stride` tokens.

    Returns columns with one entry per window: the model inputs; `example_index` (which pair it came from);
    `cls_index`; `offset_mapping`, the character span of each context token (None for question and special
    tokens). With `answer_spans` (a (start, end) character span or None per pair) also `start_positions` and
    `end_positions`: the answer's tokens, or the CLS token where the window does not hold the whole answer.
    """
    require_fast_tokenizer(tokenizer)
    questions = [q.lstrip() for q in questions]  # leading blanks (common in SQuAD) only waste window room
    _check_room(tokenizer, questions, max_length, doc_stride)
    encoded = tokenizer(questions, list(contexts), truncation="only_second", max_length=max_length,
                        stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    all_offsets = encoded.pop("offset_mapping")
    windows: dict[str, list] = {key: list(values) for key, values in encoded.items()}
    windows.update(example_index=[], cls_index=[], offset_mapping=[])
    if answer_spans is not None:
        windows.update(start_positions=[], end_positions=[])
    for w, example in enumerate(sample_map):
        sequence_ids = encoded.sequence_ids(w)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(all_offsets[w], sequence_ids)]
        ids = windows["input_ids"][w]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        windows["example_index"].append(example)
        windows["cls_index"].append(cls)
        windows["offset_mapping"].append(offsets)
        if answer_spans is not None:
            start, end = answer_token_positions(offsets, answer_spans[example], cls)
            windows["start_positions"].append(start)
            windows["end_positions"].append(end)
    return windows


def _check_room(tokenizer, questions: list[str], max_length: int, doc_stride: int) -> None:
    """The tokenizer panics (not raises) when a window has no room for the stride: say so first."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = max(lengths, default=0)
    room = max_length - specials - longest
    if room <= doc_stride:
        raise UsageError(f"a question of {longest} tokens leaves {max(room, 0)} context tokens per window with "
                         f"--max-length {max_length}, not more than --doc-stride {doc_stride}; raise --max-length "
                         "or lower --doc-stride")


def answer_token_positions(offsets: Sequence[Optional[tuple[int, int]]], span: Optional[tuple[int, int]],
                           cls: int) -> tuple[int, int]:
    """The first and last token of the character span `span` in a window, or (cls, cls) if not all in it."""
    context_tokens = [k for k, o in enumerate(offsets) if o is not None]
    if span is None or not context_tokens:
        return cls, cls
    char_start, char_end = span
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > char_start or offsets[last][1] < char_end:
        return cls, cls
    start = first
    while start <= last and offsets[start][0] <= char_start:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= char_end:
        end -= 1
    return start - 1, end + 1


def best_answers(contexts: Sequence[str], example_index: Sequence[int], offsets: Sequence[Sequence],
                 cls_index: Sequence[int], start_logits, end_logits, settings: SpanSettings) -> list[dict[str, Any]]:
    """The best answer of each context over all its windows: text, start, end (characters) and score.

    Candidates are the `n_best` start and end tokens of each window that make a span inside the context
    no longer than `max_answer_length` tokens, scored by start + end logit. For SQuAD v2 data the answer
    is "" (no answer) when the smallest no-answer score of the windows (CLS start + CLS end logit) beats
    the best span by more than `null_threshold`. The score is the chosen answer's softmax probability
    among the candidates (and the no-answer option for v2).
    """
    import numpy as np

    windows_of: dict[int, list[int]] = defaultdict(list)
    for w, example in enumerate(example_index):
        windows_of[example].append(w)
    results = []
    for example, context in enumerate(contexts):
        candidates: list[tuple[float, int, int]] = []
        null_score: Optional[float] = None
        for w in windows_of.get(example, []):
            window_offsets = offsets[w]
            n = len(window_offsets)
            # Logits beyond the window's own tokens are batch padding: never candidates.
            starts = np.asarray(start_logits[w][:n], dtype=np.float64)
            ends = np.asarray(end_logits[w][:n], dtype=np.float64)
            cls = cls_index[w]
            window_null = float(starts[cls] + ends[cls])
            null_score = window_null if null_score is None else min(null_score, window_null)
            top_starts = np.argsort(-starts, kind="stable")[:settings.n_best]
            top_ends = np.argsort(-ends, kind="stable")[:settings.n_best]
            for s in top_starts.tolist():
                if window_offsets[s] is None:
                    continue
                for e in top_ends.tolist():
                    if window_offsets[e] is None or e < s or e - s + 1 > settings.max_answer_length:
                        continue
                    candidates.append((float(starts[s] + ends[e]), window_offsets[s][0], window_offsets[e][1]))
        results.append(_choose(context, candidates, null_score, settings))
    return results


def _choose(context: str, candidates: list[tuple[float, int, int]], null_score: Optional[float],
            settings: SpanSettings) -> dict[str, Any]:
    import numpy as np

    candidates.sort(key=lambda c: -c[0])  # stable: among equal scores the earliest window/token wins
    candidates = candidates[:settings.n_best]
    scores = [c[0] for c in candidates]
    if settings.version_2 and null_score is not None:
        scores.append(null_score)
    if not scores:
        return {"text": "", "start": None, "end": None, "score": 0.0}
    shifted = np.exp(np.asarray(scores) - max(scores))
    probs = shifted / shifted.sum()
    no_answer = not candidates or (settings.version_2 and null_score is not None
                                   and null_score - candidates[0][0] > settings.null_threshold)
    if no_answer:
        return {"text": "", "start": None, "end": None, "score": float(probs[-1]) if settings.version_2 else 0.0}
    _, start, end = candidates[0]
    return {"text": context[start:end], "start": start, "end": end, "score": float(probs[0])}
