"""Preference pairs: the layouts `ftune dpo` reads, the checks a pair must pass, and its token ids.

Every layout becomes TRL's explicit-prompt preference format, one pair per row: `prompt`, `chosen`, `rejected`, each
either a string or chat messages (lists of role/content):

- explicit: `prompt`, `chosen`, `rejected` columns (strings, or messages; a string prompt before chat answers is the
  user's turn);
- shared prefix (the Anthropic HH layout): only `chosen` and `rejected`, two whole conversations that share their
  beginning: the shared part is the prompt. For HH's strings ("\\n\\nHuman: ... \\n\\nAssistant: ...") the prompt ends
  after the last shared "Assistant:", so an answer never loses its first letters to the prompt; for other strings
  it is TRL's `extract_prompt`;
- UltraFeedback-binarized: a string `prompt` and `chosen`/`rejected` conversations that begin with it: the shared
  messages are the prompt.

Token ids follow TRL's DPOTrainer (`prompt_ids`, `chosen_ids`, `rejected_ids`; the answer starts where the prompt and
prompt + answer tokenise apart, an EOS ends a string answer), so TRL's collator and loss read them as its own.
"""

from __future__ import annotations

from typing import Any, Optional

HH_TURN = "\n\nAssistant:"


def is_messages(value: Any) -> bool:
    """Whether a cell holds chat messages (a list of role/content records)."""
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def messages(value: list) -> list[dict]:
    """Chat messages with only their role and content (datasets fills absent keys of a record with None)."""
    return [{"role": m["role"], "content": m.get("content") or ""} for m in value]


def normalise_pair(prompt: Any, chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of one row in TRL's explicit-prompt format; raises ValueError saying what is wrong
    with the row (the caller names the row)."""
    if is_messages(chosen) and is_messages(rejected):
        chosen, rejected = messages(chosen), messages(rejected)
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared:
            return chosen[:shared], chosen[shared:], rejected[shared:]
        if is_messages(prompt):
            return messages(prompt), chosen, rejected
        if isinstance(prompt, str) and prompt.strip():
            return [{"role": "user", "content": prompt}], chosen, rejected
        raise ValueError("its chosen and rejected conversations share no first message and it has no prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            return shared_prefix(chosen, rejected)
        if isinstance(prompt, str):
            return prompt, chosen, rejected
        raise ValueError("its prompt is chat messages but its answers are plain text; give both as text or both "
                         "as messages")
    kinds = {type(v).__name__ if not is_messages(v) else "messages" for v in (chosen, rejected)}
    raise ValueError(f"its chosen and rejected are not both text or both chat messages ({', '.join(sorted(kinds))})")


def shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Two whole texts that share their beginning (HH): (prompt, chosen answer, rejected answer)."""
    from trl.data_utils import extract_prompt

    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    turn = chosen.rfind(HH_TURN, 0, common)
    if turn >= 0:
        cut = turn + len(HH_TURN)
        return chosen[:cut], chosen[cut:], rejected[cut:]
    pair = extract_prompt({"chosen": chosen, "rejected": rejected})
    return pair["prompt"], pair["chosen"], pair["rejected"]


def pair_problem(prompt: Any, chosen: Any, rejected: Any) -> Optional[str]:
    """What makes a normalised pair untrainable: an empty side, or the same answer on both sides (None if fine)."""
    if _empty(chosen) or _empty(rejected):
        return "empty"
    if chosen == rejected:
        return "same"
    return None


def _empty(answer: Any) -> bool:
    if isinstance(answer, str):
        return not answer.strip()
    return not answer or not any((m.get("content") or "").strip() for m in answer)


def encode_pair(tokenizer, prompt: Any, chosen: Any, rejected: Any) -> dict[str, list[int]]:
    """Token ids of one normalised pair, as TRL's DPOTrainer makes them: the prompt (with the generation prompt
    for a chat), and each answer from where the prompt and prompt + answer tokenise apart; a text answer ends in
    EOS."""
    from trl.data_utils import common_prefix_length

    if isinstance(chosen, list):
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        chosen_ids = _chat_ids(tokenizer, prompt + chosen)
        rejected_ids = _chat_ids(tokenizer, prompt + rejected)
    else:
        eos = tokenizer.eos_token
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        prompt_ids = tokenizer(prompt)["input_ids"]
        chosen_ids = tokenizer(prompt + chosen)["input_ids"]
        rejected_ids = tokenizer(prompt + rejected)["input_ids"]
    start = min(common_prefix_length(prompt_ids, chosen_ids), common_prefix_length(prompt_ids, rejected_ids))
    return {"prompt_ids": prompt_ids[:start], "chosen_ids": chosen_ids[start:], "rejected_ids": rejected_ids[start:]}


def prompt_length(tokenizer, prompt: Any) -> int:
    """Tokens of a normalised prompt, as `encode_pair` starts the pair with it."""
    if isinstance(prompt, list):
        return len(_chat_ids(tokenizer, prompt, add_generation_prompt=True))
    return len(tokenizer(prompt)["input_ids"])


def _chat_ids(tokenizer, conversation: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                              add_generation_prompt=add_generation_prompt)["input_ids"])
