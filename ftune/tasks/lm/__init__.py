"""`ftune lm`: causal language modelling on plain text, prompt/completion pairs or chat conversations.

One loss for all three data shapes (ftune.tasks.lm.encoding) — next-token cross-entropy on every token whose
label is not -100. A .txt file is read one line per row, so each line is a document; use a .jsonl/.csv text
column for multi-line documents.

Scoring keeps no logits: the trainer's prediction step (ftune.tasks.lm.trainer) turns each batch's logits at
once into a (sum of token losses, token count) pair per example. eval_loss is the mean token loss over all
held-out tokens and eval_perplexity its exp. In eval_predictions.jsonl each held-out row has `prediction`,
its mean token loss, `tokens`, its scored token count, and `loss_sum`; `reference` is the scored text for
completions and null for documents and chats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ftune.config import TaskOptions, option
from ftune.data import check_no_missing, check_split_text, check_text_columns, column_list, pick_column, tokenize_rows
from ftune.errors import UsageError
from ftune.tasks.base import Scores, Task
from ftune.tasks.state import TaskState
from ftune.tasks.lm.encoding import (
    data_mode,
    document_chunks,
    encode_chat,
    encode_completion,
    has_text,
    pack_blocks,
    require_chat_template,
)

TEXT_COLUMNS = ("text", "content", "document")
MESSAGES_COLUMNS = ("messages", "conversations", "conversation", "chat")


@dataclass
class LMOptions(TaskOptions):
    text_column: Optional[str] = option(None, "Column of plain text, packed into --block-size blocks "
                                              "(detected: text, content).", panel="Data")
    prompt_column: Optional[str] = option(None, "Column with prompts; loss on the completion only.",
                                          panel="Data")
    completion_column: Optional[str] = option(None, "Column with completions (with --prompt-column).",
                                              panel="Data")
    messages_column: Optional[str] = option(None, "Column with chat conversations (a list of role/content), "
                                                  "through the chat template.", panel="Data")
    block_size: Optional[int] = option(None, "Tokens per packed block (default: the model's context, capped "
                                             "at 1024).", panel="Data", min=8)
    gguf_file: Optional[str] = option(None, "GGUF file inside the --model folder.", panel="Model")
    packing: bool = option(True, "Prompt/completion and chat data: train on padding-free rows of several examples "
                                 "that do not attend to each other (where the model supports it); --no-packing pads.")

    defaults = {"model": "gpt2", "max_length": 1024}

    def check(self, config):
        problems = []
        if bool(self.prompt_column) != bool(self.completion_column):
            given, missing = (("--prompt-column", "--completion-column") if self.prompt_column
                              else ("--completion-column", "--prompt-column"))
            problems.append(f"{given} needs {missing} too (the loss is on the completion of each prompt)")
        shapes = [flag for flag, value in (("--text-column", self.text_column), ("--prompt-column", self.prompt_column),
                                           ("--messages-column", self.messages_column)) if value]
        if len(shapes) > 1:
            problems.append(f"{' and '.join(shapes)} choose different data shapes; give one of them")
        return problems


@dataclass(frozen=True, kw_only=True)
class LMState(TaskState):
    """What an lm run derives: its columns (text, prompt, completion, messages), its data shape, its lengths."""

    mode: str                           # the data shape: text, completion or chat (ftune.tasks.lm.encoding)
    context: int                        # the model's context in tokens
    block_size: int                     # tokens per packed block of plain text
    max_length: int                     # longest prompt + completion or chat, in tokens


class LMTask(Task):
    name = "lm"
    summary = "Fine-tune a causal language model on plain text, prompt/completion pairs or chats."
    options_class = LMOptions
    state_class = LMState
    model_class = "AutoModelForCausalLM"
    peft_model_class = "AutoPeftModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    main_metric = "loss"
    greater_is_better = False
    reported_metrics = ("loss", "perplexity")
    generates_text = True

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        opts = config.task_options
        found = {"text": None, "prompt": None, "completion": None, "messages": None}
        if opts.messages_column:
            found["messages"] = pick_column(columns, opts.messages_column, (), what="messages",
                                            option="--messages-column")
        elif opts.prompt_column:
            found["prompt"] = pick_column(columns, opts.prompt_column, (), what="prompt", option="--prompt-column")
            found["completion"] = pick_column(columns, opts.completion_column, (), what="completion",
                                              option="--completion-column")
        elif opts.text_column:
            found["text"] = pick_column(columns, opts.text_column, (), what="text", option="--text-column")
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
        from ftune.models import require_causal_lm

        mode = data_mode(columns)
        source = self.model_source(config)
        if source.gguf:
            require_causal_lm(source.load_config(), f"GGUF file {source.gguf}")
        context = source.context_length()
        block_size = config.task_options.block_size
        if block_size is not None and block_size > context:
            raise UsageError(f"--block-size {block_size} is above the model's context of {context} tokens; "
                             f"pass --block-size {context} or less")
        if mode == "chat":
            require_chat_template(self.load_tokenizer(config))  # now, not after a slow model load
        check_split_text(split, _text_options(columns))
        for name, ds, ids in (("the training split", split.train, split.train_names),
                              ("the held-out split", split.eval, split.eval_names)):
            if mode == "text" and not any(has_text(t) for t in column_list(ds, columns["text"])):
                raise UsageError(f"{name} has no text in column '{columns['text']}'; give rows with text")
            if mode == "completion":
                check_no_missing(ds, [columns["completion"]], name, ids=ids)
            if mode == "chat":
                check_no_missing(ds, [columns["messages"]], name, ids=ids)
        return LMState(columns=columns, mode=mode, context=context, block_size=block_size or min(context, 1024),
                       max_length=min(config.max_length, context))

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        check_text_columns(rows, _text_options(state.columns), where)

    # ---- model ------------------------------------------------------------------------------------
    def check_input_length(self, config, tokenizer):
        """Inputs are fitted to the model's context in prepare_state (blocks and --max-length capped at it)."""

    def model_source(self, config):
        from ftune.models import ModelSource

        return ModelSource.parse(config.model, config.task_options.gguf_file)

    # ---- features ---------------------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        columns, mode = state.columns, state.mode
        if mode == "text":
            texts = column_list(rows, columns["text"])
            if purpose == "train":
                return pack_blocks(tokenizer, texts, state.block_size)
            return document_chunks(tokenizer, texts, state.block_size)
        if mode == "completion":
            def encode(batch):
                pairs = [encode_completion(tokenizer, p or "", c, state.max_length)
                         for p, c in zip(batch[columns["prompt"]], batch[columns["completion"]])]
                return {"input_ids": [ids for ids, _ in pairs], "labels": [labels for _, labels in pairs],
                        "attention_mask": [[1] * len(ids) for ids, _ in pairs]}
        else:
            require_chat_template(tokenizer)

            def encode(batch):
                pairs = [encode_chat(tokenizer, list(m), state.max_length) for m in batch[columns["messages"]]]
                return {"input_ids": [ids for ids, _ in pairs], "labels": [labels for _, labels in pairs],
                        "attention_mask": [[1] * len(ids) for ids, _ in pairs]}
        return tokenize_rows(rows, encode, config, desc="tokenizing")

    def model_inputs(self, features):
        return features.remove_columns("row") if "row" in features.column_names else features

    def collator(self, config, tokenizer, model, pad_to_multiple_of):
        # Pads labels with -100, not with the pad token: GPT-2-style tokenizers pad with EOS, and the EOS that
        # ends each completion must keep its label (DataCollatorForLanguageModeling would mask it).
        from transformers import DataCollatorForSeq2Seq

        from ftune.tasks.lm.encoding import IGNORE

        return DataCollatorForSeq2Seq(tokenizer, model=None, label_pad_token_id=IGNORE,
                                      pad_to_multiple_of=pad_to_multiple_of)

    def trainer_class(self):
        from ftune.tasks.lm.trainer import TokenLossTrainer

        return TokenLossTrainer

    def trainer_kwargs(self, config, state):
        # Plain text is already packed into full blocks; the other shapes pack at batch time.
        return {"packing": config.task_options.packing and state.mode != "text"}

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        """Each row's (loss sum, token count); a document cut into several blocks sums its blocks."""
        sums = [(0.0, 0)] * len(rows)
        owners = column_list(features, "row") if "row" in features.column_names else range(len(rows))
        for owner, (loss, count) in zip(owners, predictions.tolist()):
            total, tokens = sums[owner]
            sums[owner] = (total + loss, tokens + int(count))
        return [{"prediction": (total / tokens) if tokens else None, "tokens": tokens, "loss_sum": total}
                for total, tokens in sums]

    def references(self, config, state, rows):
        if state.mode == "completion":
            return column_list(rows, state.columns["completion"])
        return [None] * len(rows)

    def metrics(self, config, state, outputs, references, features):
        count = sum(o["tokens"] for o in outputs)
        loss = sum(o["loss_sum"] for o in outputs) / max(count, 1)
        figures = {"loss": loss, "perplexity": perplexity(loss), "tokens": count}
        if state.mode == "text":
            figures["blocks"] = len(features)
        return Scores(metrics=figures)

    def model_card_usage(self, config, state, run_path):
        return super().model_card_usage(config, state, run_path) + (
            f"\n\n# or from the command line:\n# ftune generate --model {run_path} --prompt \"...\"")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def _text_options(columns) -> dict[str, str]:
    """The columns of text (not chats) and the options that choose them."""
    options = {"text": "--text-column", "prompt": "--prompt-column", "completion": "--completion-column"}
    return {columns[role]: flag for role, flag in options.items() if columns.get(role)}


TASK = LMTask()
