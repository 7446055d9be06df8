"""Sentences as model inputs, and the model's outputs back as one tag per word.

Sub-word alignment: a word's first sub-token carries the word's tag; its other sub-tokens are -100 (ignored by
the loss), or with --label-all-tokens carry the tag too (a B- tag becomes the matching I- tag when the data has
one, since the sub-token continues the entity). A word's prediction is read at its first sub-token.

Long sentences are never cut. A sentence longer than --max-length tokens becomes word windows that fit, each
overlapping the one before by about a quarter of a window (OVERLAP), so words near a window's edge still see
context. Every word is predicted by exactly one window: the one where it has the most words around it on its
shorter side (the "max context" rule); only there does it carry a label, so training counts it once, too.
A window depends on its own sentence only, so a word's prediction never depends on the batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ftune.errors import UsageError

OVERLAP = 0.25          # share of a window's tokens repeated from the window before (context, not predicted)
IGNORE = -100           # the label the loss skips
# Columns of the features that say where each token came from; the model does not take them.
WORD_INFO_COLUMNS = ("example_index", "word_index")


def require_fast_tokenizer(tokenizer, model_name: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{model_name} has no fast tokenizer (tokenizer.json); token classification maps "
                         "sub-tokens to words through word_ids, which only a fast tokenizer gives: choose a model "
                         "that ships one")


def plan_windows(lengths: Sequence[int], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) whose token counts fit `budget`; each after the first starts up to `overlap`
    tokens before the previous one ended, and always after the previous one started. A word longer than the
    budget gets a window of its own (its tail is cut; its first sub-token, which is read, stays)."""
    windows: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        end, used = start, 0
        while end < n and (end == start or used + lengths[end] <= budget):
            used += lengths[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            break
        next_start, repeated = end, 0
        while next_start - 1 > start and repeated + lengths[next_start - 1] <= overlap:
            next_start -= 1
            repeated += lengths[next_start]
        start = next_start
    return windows


def owners(windows: list[tuple[int, int]], n_words: int) -> list[int]:
    """For each word, the window that predicts it: the most words of context on its shorter side (ties: the
    earlier window)."""
    best = [-1] * n_words
    room = [-1] * n_words
    for w, (start, end) in enumerate(windows):
        for i in range(start, end):
            context = min(i - start, end - 1 - i)
            if context > room[i]:
                best[i], room[i] = w, context
    return best


def encode_sentences(tokenizer, sentences: list[list[str]], *, max_length: int,
                     tag_ids: Optional[list[list[int]]] = None, continuation: Optional[dict[int, int]] = None,
                     label_all_tokens: bool = False) -> dict[str, list]:
    """Model inputs for `sentences` (lists of words): one window, or several for a long sentence.

    Returns columns with one entry per window: the tokenizer's inputs, `example_index` (the sentence),
    `word_index` (per token: the sentence's index of the word this window predicts there, at the word's first
    sub-token; else -1) and, with `tag_ids`, `labels`. `continuation` maps a tag id to the id its word's
    further sub-tokens get with `label_all_tokens`.
    """
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise UsageError(f"--max-length {max_length} leaves no room for words next to the model's special tokens; "
                         "raise --max-length")
    whole = tokenizer(sentences, is_split_into_words=True)
    out: dict[str, list] = {key: [] for key in whole.keys()}
    out.update(example_index=[], word_index=[])
    if tag_ids is not None:
        out["labels"] = []
    for s, words in enumerate(sentences):
        inputs, word_ids = {k: whole[k][s] for k in whole.keys()}, whole.word_ids(s)
        if len({w for w in word_ids if w is not None}) < len(words):
            words, inputs, word_ids = _with_stand_ins(tokenizer, words, word_ids)
        if len(inputs["input_ids"]) <= max_length:
            windows = [(0, len(words), inputs, word_ids)]
        else:
            windows = _split_long(tokenizer, words, word_ids, budget, max_length)
        predicts = owners([(a, b) for a, b, _, _ in windows], len(words))
        for w, (start, _, inputs, word_ids) in enumerate(windows):
            word_index, labels, previous = [], [], None
            for word in word_ids:
                sentence_word = None if word is None else start + word
                owned = sentence_word is not None and predicts[sentence_word] == w
                first = owned and word != previous
                word_index.append(sentence_word if first else -1)
                if tag_ids is not None:
                    labels.append(_label(tag_ids[s], sentence_word, owned, first, continuation, label_all_tokens))
                previous = word
            for key, values in inputs.items():
                out[key].append(values)
            out["example_index"].append(s)
            out["word_index"].append(word_index)
            if tag_ids is not None:
                out["labels"].append(labels)
    return out


def _label(tags: list[int], word: Optional[int], owned: bool, first: bool, continuation: Optional[dict[int, int]],
           label_all_tokens: bool) -> int:
    if not owned:
        return IGNORE
    if first:
        return tags[word]
    return (continuation or {}).get(tags[word], tags[word]) if label_all_tokens else IGNORE


def _with_stand_ins(tokenizer, words: list[str], word_ids: list[Optional[int]]):
    """A sentence with the words that the tokenizer turns into nothing (white space, a control character)
    replaced by its unknown token, so every word has a first sub-token to be predicted at: (words, inputs,
    word ids)."""
    present = {w for w in word_ids if w is not None}
    stand_in = tokenizer.unk_token or "?"
    words = [word if i in present else stand_in for i, word in enumerate(words)]
    encoded = tokenizer([words], is_split_into_words=True)
    return words, {k: encoded[k][0] for k in encoded.keys()}, encoded.word_ids(0)


def _split_long(tokenizer, words: list[str], word_ids: list[Optional[int]], budget: int, max_length: int):
    """Windows of a sentence longer than `max_length`: [(start, end, inputs, word ids within the window)].

    Windows are planned on the sentence's own token counts; a window tokenized alone can come out a little
    longer (some tokenizers mark only the first word of an input), so a window that loses a word's first
    sub-token to truncation is planned again with a smaller budget.
    """
    lengths = [0] * len(words)
    for word in word_ids:
        if word is not None:
            lengths[word] += 1
    while True:
        planned = plan_windows(lengths, budget, int(budget * OVERLAP))
        encoded = tokenizer([words[a:b] for a, b in planned], is_split_into_words=True, truncation=True,
                            max_length=max_length)
        windows, short = [], False
        for w, (start, end) in enumerate(planned):
            ids = encoded.word_ids(w)
            if len({i for i in ids if i is not None}) < end - start:
                short = True
                break
            windows.append((start, end, {k: encoded[k][w] for k in encoded.keys()}, ids))
        if not short:
            return windows
        if budget == 1:
            raise RuntimeError(f"a window of one word lost the word's first sub-token (--max-length {max_length})")
        budget -= 1


def word_logits(example_index: Sequence[int], word_index: Sequence[Sequence[int]], logits,
                sentence_lengths: Sequence[int]) -> list[list]:
    """Per sentence, per word, the logits at the word's first sub-token in the window that predicts it."""
    found: list[list] = [[None] * n for n in sentence_lengths]
    for f, (sentence, positions) in enumerate(zip(example_index, word_index)):
        for t, word in enumerate(positions):
            if word >= 0:
                found[sentence][word] = logits[f][t]
    for s, words in enumerate(found):
        if any(w is None for w in words):
            raise RuntimeError(f"sentence {s}: {sum(w is None for w in words)} word(s) got no prediction")
    return found
