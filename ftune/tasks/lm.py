"""`ftune lm`: causal language modelling on plain text, prompt/completion pairs or chat conversations.

One loss for all three data shapes — next-token cross-entropy on every token whose label is not -100:
- text: each row is a document; documents are tokenised, joined with EOS and cut into --block-size blocks
  (packing: no pad tokens, every token trains). A .txt file is read one line per row, so each line is a
  document; use a .jsonl/.csv text column for multi-line documents.
- completion: prompt + completion + EOS; the prompt's labels are -100, so only the completion is learned,
  and the EOS teaches the model to stop.
- chat: the conversation through the tokenizer's chat template; only the assistant turns carry labels.

Scoring keeps no logits: the trainer's prediction step turns each batch's logits at once into a
(sum of token losses, token count) pair per example. eval_loss is the mean token loss over all held-out
tokens and eval_perplexity its exp. In eval_predictions.jsonl, `prediction` is an example's mean token
loss and `tokens` its scored token count; `reference` is the scored text for completions and null for
packed blocks (a block cuts across documents) and chats (several assistant turns).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ftune.data import check_no_missing, pick_column
from ftune.errors import UsageError
from ftune.tasks.base import Evaluation, Task

TEXT_COLUMNS = ("text", "content", "document")
MESSAGES_COLUMNS = ("messages", "conversations", "conversation", "chat")
IGNORE = -100  # label of tokens that are not scored (prompt, user turns, padding)


class LMTask(Task):
    name = "lm"
    model_class = "AutoModelForCausalLM"
    peft_model_class = "AutoPeftModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    main_metric = "loss"
    greater_is_better = False
    pipeline_task = "text-generation"

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        found = {"text": None, "prompt": None, "completion": None, "messages": None}
        if config.messages_column:
            found["messages"] = pick_column(columns, config.messages_column, (), what="messages",
                                            option="--messages-column")
        elif config.prompt_column:
            found["prompt"] = pick_column(columns, config.prompt_column, (), what="prompt", option="--prompt-column")
            found["completion"] = pick_column(columns, config.completion_column, (), what="completion",
                                              option="--completion-column")
        elif config.text_column:
            found["text"] = pick_column(columns, config.text_column, (), what="text", option="--text-column")
        else:
            lower = {c.lower() for c in columns}
            if "prompt" in lower and "completion" in lower:
                found["prompt"] = pick_column(columns, None, ("prompt",), what="prompt", option="--prompt-column")
                found["completion"] = pick_column(columns, None, ("completion",), what="completion",
                                                  option="--completion-column")
            elif lower & set(MESSAGES_COLUMNS):
                found["messages"] = pick_column(columns, None, MESSAGES_COLUMNS, what="messages",
                                                option="--messages-column")
            else:
                found["text"] = pick_column(columns, None, TEXT_COLUMNS, what="text (or prompt/completion, "
                                            "or messages)", option="--text-column")
        return found

    def prepare_state(self, config, split, columns):
        mode = data_mode(columns)
        context = model_context(config)
        if config.block_size is not None and config.block_size > context:
            raise UsageError(f"--block-size {config.block_size} is above the model's context of {context} tokens; "
                             f"pass --block-size {context} or less")
        if mode == "chat":
            require_chat_template(self.load_tokenizer(config))  # now, not after a slow model load
        for name, ds in (("the training split", split.train), ("the held-out split", split.eval)):
            if mode == "text" and not any(isinstance(t, str) and t.strip() for t in ds[columns["text"]]):
                raise UsageError(f"{name} has no text in column '{columns['text']}'; give rows with text")
            if mode == "completion":
                check_no_missing(ds, [columns["completion"]], name)
            if mode == "chat":
                check_no_missing(ds, [columns["messages"]], name)
        return {"columns": columns, "mode": mode, "context": context,
                "block_size": config.block_size or min(context, 1024), "max_length": min(config.max_length, context)}

    # ---- model ------------------------------------------------------------------------------------
    def load_tokenizer(self, config):
        from ftune.gguf_models import gguf_source, load_gguf_tokenizer
        from ftune.models import load_tokenizer

        folder, gguf = gguf_source(config.model, config.gguf_file)
        return load_gguf_tokenizer(folder, gguf) if gguf else load_tokenizer(config.model)

    def load_model(self, config, tokenizer, state):
        from ftune.gguf_models import gguf_source, load_gguf_causal_lm

        folder, gguf = gguf_source(config.model, config.gguf_file)
        if gguf and getattr(config, "load_in_4bit", False):
            raise UsageError("--load-in-4bit does not apply to a GGUF model (it is dequantised to float for "
                             "training); drop one of them")
        return load_gguf_causal_lm(folder, gguf) if gguf else super().load_model(config, tokenizer, state)

    def load_base_model(self, run_config, state, **kwargs):
        from ftune.gguf_models import gguf_source, load_gguf_causal_lm
        from ftune.models import load_model

        folder, gguf = gguf_source(run_config["model"], run_config.get("gguf_file"))
        if gguf:
            return load_gguf_causal_lm(folder, gguf)
        return load_model(self.model_class, run_config["model"], **kwargs)

    # ---- features ---------------------------------------------------------------------------------
    def preprocess(self, config, tokenizer, ds, state, *, training):
        columns, mode = state["columns"], state["mode"]
        if mode == "text":
            return pack_blocks(tokenizer, ds[columns["text"]], state["block_size"], keep_remainder=not training)
        if mode == "completion":
            def encode(batch):
                pairs = [encode_completion(tokenizer, p or "", c, state["max_length"])
                         for p, c in zip(batch[columns["prompt"]], batch[columns["completion"]])]
                return {"input_ids": [ids for ids, _ in pairs], "labels": [labels for _, labels in pairs],
                        "attention_mask": [[1] * len(ids) for ids, _ in pairs]}
        else:
            require_chat_template(tokenizer)

            def encode(batch):
                pairs = [encode_chat(tokenizer, list(m), state["max_length"]) for m in batch[columns["messages"]]]
                return {"input_ids": [ids for ids, _ in pairs], "labels": [labels for _, labels in pairs],
                        "attention_mask": [[1] * len(ids) for ids, _ in pairs]}
        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def collator(self, config, tokenizer, model, pad_to_multiple_of):
        # Pads labels with -100, not with the pad token: GPT-2-style tokenizers pad with EOS, and the EOS that
        # ends each completion must keep its label (DataCollatorForLanguageModeling would mask it).
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=None, label_pad_token_id=IGNORE,
                                      pad_to_multiple_of=pad_to_multiple_of)

    def compute_metrics(self, state):
        def compute(eval_pred):
            sums = eval_pred.predictions
            loss = float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1))
            return {"loss": loss, "perplexity": _perplexity(loss)}

        return compute

    def trainer_class(self):
        from ftune.tasks.lm_scoring import TokenLossTrainer

        return TokenLossTrainer

    # ---- scoring ----------------------------------------------------------------------------------
    def evaluate(self, trainer, tokenizer, config, rows, state) -> Evaluation:
        features = self.preprocess(config, tokenizer, rows, state, training=False)
        output = trainer.predict(features, metric_key_prefix="eval")
        sums = output.predictions
        total, count = float(sums[:, 0].sum()), int(sums[:, 1].sum())
        loss = total / max(count, 1)
        metrics = {"eval_loss": loss, "eval_perplexity": _perplexity(loss), "eval_tokens": count,
                   "eval_samples": len(rows)}
        if state["mode"] == "text":
            metrics["eval_blocks"] = len(features)
            ids, references = list(range(len(features))), [None] * len(features)
        else:
            ids = _row_ids(rows)
            references = list(rows[state["columns"]["completion"]]) if state["mode"] == "completion" \
                else [None] * len(rows)
        predictions = [{"id": ids[i], "prediction": (float(s) / n) if (n := int(c)) else None, "tokens": n,
                        "reference": references[i]} for i, (s, c) in enumerate(sums.tolist())]
        return Evaluation(metrics=metrics, predictions=predictions)

    def model_card_usage(self, run_path, lora, state):
        return super().model_card_usage(run_path, lora, state) + (
            f"\n\n# or from the command line:\n# ftune generate --model {run_path} --prompt \"...\"")


# --------------------------------------------------------------------------------------------------
# Features


def data_mode(columns: dict[str, Optional[str]]) -> str:
    return "chat" if columns.get("messages") else "completion" if columns.get("prompt") else "text"


def pack_blocks(tokenizer, texts, block_size: int, *, keep_remainder: bool):
    """Documents joined with EOS and cut into `block_size` blocks; the last partial block is dropped for
    training (so no block needs padding) unless it is the only one, and kept for scoring (every held-out
    token counts)."""
    import datasets

    docs = [t for t in texts if isinstance(t, str) and t.strip()]
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has no EOS token to separate documents; use a tokenizer that has one")
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    blocks = [stream[i:i + block_size] for i in range(0, len(stream), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < block_size and not keep_remainder:
        blocks.pop()
    return datasets.Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks],
                                       "labels": [list(b) for b in blocks]})


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


# --------------------------------------------------------------------------------------------------
# Helpers


def model_context(config) -> int:
    """The model's context length in tokens (from its config; GGUF files included)."""
    from ftune.gguf_models import gguf_source, load_gguf_config, require_causal_lm

    folder, gguf = gguf_source(config.model, config.gguf_file)
    if gguf:
        model_config = load_gguf_config(folder, gguf)
        require_causal_lm(model_config, f"GGUF file {gguf}")
    else:
        from transformers import AutoConfig

        try:
            model_config = AutoConfig.from_pretrained(config.model)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load the configuration of {config.model}: {str(exc).splitlines()[0]}") from None
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def _row_ids(rows) -> list[Any]:
    for name in ("id", "idx", "guid"):
        if name in rows.column_names:
            return list(rows[name])
    return list(range(len(rows)))


TASK = LMTask()
