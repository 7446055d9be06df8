"""How the three data shapes of `ftune lm` become token ids and labels (-100: not scored).

- text: for training, documents joined with EOS and cut into --block-size blocks (packing: no pad tokens, every
  token trains); for scoring, each document on its own, so each held-out row has its own loss.
- completion: prompt + completion + EOS; the prompt's labels are -100, so only the completion is learned.
- chat: the conversation through the tokenizer's chat template; only the assistant turns carry labels.
"""

from __future__ import annotations

from typing import Optional

from ftune.errors import UsageError

IGNORE = -100  # label of tokens that are not scored (prompt, user turns, padding)


def data_mode(columns: dict[str, Optional[str]]) -> str:
    return "chat" if columns.get("messages") else "completion" if columns.get("prompt") else "text"


def pack_blocks(tokenizer, texts, block_size: int):
    """Training blocks: documents joined with EOS and cut into `block_size` blocks; the last partial block is
    dropped (so no block needs padding) unless it is the only one."""
    import datasets

    docs = [t for t in texts if has_text(t)]
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += ids + [eos_id(tokenizer)]
    blocks = [stream[i:i + block_size] for i in range(0, len(stream), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < block_size:
        blocks.pop()
    return datasets.Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks],
                                       "labels": [list(b) for b in blocks]})


def document_chunks(tokenizer, texts, block_size: int):
    """Scoring features: each document alone, after a separator token (BOS, else EOS) as in training, where every
    document follows an EOS, and ending in EOS; every token but the separator is scored. A document longer than
    a block is cut into blocks that overlap by one token, so each token is predicted exactly once. The `row`
    column says which document a block belongs to; documents without text get no block."""
    import datasets

    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_id(tokenizer)
    rows = [i for i, t in enumerate(texts) if has_text(t)]
    encoded = tokenizer([texts[i] for i in rows], add_special_tokens=False)["input_ids"] if rows else []
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "row": []}
    for row, ids in zip(rows, encoded):
        stream = [sep] + ids + [eos_id(tokenizer)]
        for start in range(0, len(stream) - 1, block_size - 1):
            chunk = stream[start:start + block_size]
            columns["input_ids"].append(chunk)
            columns["attention_mask"].append([1] * len(chunk))
            columns["labels"].append([IGNORE] + chunk[1:])  # the first token is context, never a target
            columns["row"].append(row)
    return datasets.Dataset.from_dict(columns)


def has_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has no EOS token to end documents with; use a tokenizer that has one")
    return tokenizer.eos_token_id


def encode_completion(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], list[int]]:
    """input_ids and labels for one pair: prompt tokens labelled -100, completion + EOS labelled."""
    prompt_ids = tokenizer(prompt)["input_ids"] if prompt else []
    target = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(target) > max_length:
        # The loss is on the completion: cut the prompt's oldest tokens first, but keep half the window for it.
        keep_prompt = max(max_length - len(target), max_length // 2) if prompt_ids else 0
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:] if keep_prompt else []
        target = target[:max_length - len(prompt_ids)]
    return prompt_ids + target, [IGNORE] * len(prompt_ids) + target


def require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("the tokenizer has no chat template, which --messages-column needs; use a chat model's "
                         "tokenizer or train on --prompt-column/--completion-column instead")


def encode_chat(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """input_ids and labels for one conversation: only the assistant turns (with their end-of-turn token) are
    labelled. The template is rendered for growing prefixes of the conversation; each assistant turn is the
    text its message adds after the generation prompt."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            _append(tokenizer, ids, labels, _tail(prompt, rendered), scored=False)
            rendered = prompt
        full = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        _append(tokenizer, ids, labels, _tail(full, rendered), scored=message["role"] == "assistant")
        rendered = full
    return ids[:max_length], labels[:max_length]


def _tail(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise UsageError("the tokenizer's chat template renders a conversation differently from its beginning, "
                         "so assistant turns cannot be told apart; use --prompt-column/--completion-column instead")
    return text[len(prefix):]


def _append(tokenizer, ids: list[int], labels: list[int], text: str, *, scored: bool) -> None:
    piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    ids += piece
    labels += piece if scored else [IGNORE] * len(piece)
