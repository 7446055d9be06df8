"""The Ollama `Modelfile` beside a GGUF export: `ollama create NAME -f Modelfile` makes a model of the file.

It holds `FROM ./FILE.gguf`, a `TEMPLATE` in Ollama's Go template language translated from the tokenizer's Jinja
chat template, the stop tokens, and the generation parameters the GGUF metadata carries (greedy unless the model's
generation config samples; no repeat penalty unless it sets one, where Ollama's own default is 1.1).

A Jinja template cannot be translated in general, so it is read by what it renders: each role's text around a
message (from conversations that differ by one message), the assistant's generation prompt, and what comes before a
conversation without a system message (a default system prompt, a BOS). The template Ollama gets renders
`.Messages` with those pieces. A chat template that does not render conversations as a growing prefix gets no
TEMPLATE (a note says so), and a tokenizer without one none either: Ollama then sends the prompt as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

MODELFILE = "Modelfile"
# Placeholder message contents: text no template adds on its own, found again in what it renders.
SYSTEM, USER, ASSISTANT = "\u2063SYSTEM\u2063", "\u2063USER\u2063", "\u2063ASSISTANT\u2063"


@dataclass(frozen=True)
class ChatPieces:
    """The text a chat template puts around each role's message."""

    prelude: str                # before a conversation that has no system message
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str             # the assistant's generation prompt


def write_modelfile(folder: Path, gguf_name: str, tokenizer, defaults: dict[str, Any], *, context: int) -> Path:
    """Write `folder/Modelfile` for `gguf_name` and return its path."""
    target = folder / MODELFILE
    target.write_text(modelfile_text(gguf_name, tokenizer, defaults, context=context), encoding="utf-8")
    return target


def modelfile_text(gguf_name: str, tokenizer, defaults: dict[str, Any], *, context: int) -> str:
    lines = [f"# ollama create NAME -f {MODELFILE}", f"FROM ./{gguf_name}", ""]
    pieces = chat_pieces(tokenizer)
    if pieces is not None:
        lines += [f'TEMPLATE """{go_template(pieces)}"""', ""]
    elif getattr(tokenizer, "chat_template", None):
        lines += ["# The chat template does not render a conversation as a growing prefix, so it could not be",
                  "# translated into Ollama's TEMPLATE; prompts are sent as they are.", ""]
    for stop in stop_tokens(tokenizer, pieces):
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    lines.append(f"PARAMETER num_ctx {context}")
    lines.append(f"PARAMETER temperature {defaults['temperature']:g}")
    lines.append(f"PARAMETER repeat_penalty {defaults['repeat_penalty']:g}")
    if "top_p" in defaults:
        lines.append(f"PARAMETER top_p {float(defaults['top_p']):g}")
    if "top_k" in defaults:
        lines.append(f"PARAMETER top_k {int(defaults['top_k'])}")
    return "\n".join(lines) + "\n"


def chat_pieces(tokenizer) -> Optional[ChatPieces]:
    """The pieces of the tokenizer's chat template, or None when it has none or they cannot be read off it."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list[tuple[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False,
                                             add_generation_prompt=generation)

    system, user, assistant = ("system", SYSTEM), ("user", USER), ("assistant", ASSISTANT)
    try:
        with_system = render([system])
        first = render([system, user])
        answered = render([system, user, assistant])
        prompted = render([system, user], generation=True)
        alone = render([user])
    except Exception:  # noqa: BLE001 — a template may raise on any conversation it does not expect
        return None
    if not (first.startswith(with_system) and answered.startswith(first) and prompted.startswith(first)):
        return None
    user_turn, assistant_turn = first[len(with_system):], answered[len(first):]
    if not alone.endswith(user_turn):
        return None
    parts = [_around(with_system, SYSTEM), _around(user_turn, USER), _around(assistant_turn, ASSISTANT)]
    if None in parts or parts[0][0] is None:
        return None
    return ChatPieces(prelude=alone[:len(alone) - len(user_turn)], system=parts[0], user=parts[1],
                      assistant=parts[2], generation=prompted[len(first):])


def _around(text: str, marker: str) -> Optional[tuple[str, str]]:
    if text.count(marker) != 1:
        return None
    before, after = text.split(marker)
    return before, after


def go_template(pieces: ChatPieces) -> str:
    """Ollama's TEMPLATE rendering `.Messages` as the chat template does, ending with the generation prompt. No
    trim markers: the pieces' own whitespace (newlines after a role name) is part of the prompt."""
    def role(keyword: str, name: str, around: tuple[str, str]) -> str:
        return f'{{{{ {keyword} eq .Role "{name}" }}}}{_go(around[0])}{{{{ .Content }}}}{_go(around[1])}'

    return (f'{{{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}}}{_go(pieces.prelude)}'
            f'{{{{ end }}}}{{{{ range .Messages }}}}{role("if", "system", pieces.system)}'
            f'{role("else if", "user", pieces.user)}{role("else if", "assistant", pieces.assistant)}'
            f'{{{{ end }}}}{{{{ end }}}}{_go(pieces.generation)}')


def _go(text: str) -> str:
    """Literal text inside a Go template: its own `{{` written as a string action."""
    return text.replace("{{", '{{ "{{" }}')


def stop_tokens(tokenizer, pieces: Optional[ChatPieces]) -> list[str]:
    """The tokens that end a reply: EOS, and the special token that ends an assistant turn in the chat template."""
    found = []
    if tokenizer.eos_token:
        found.append(tokenizer.eos_token)
    if pieces is not None:
        specials = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
        end = pieces.assistant[1].strip()
        if end in specials and end not in found:
            found.append(end)
    return found


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
