"""The seq2seq base that summarize and translate are thin layers on: text in, text out, through any
`AutoModelForSeq2SeqLM` (T5, BART, mBART, Marian, an EncoderDecoderModel ...).

Sources get the run's prefix (a T5-family model reads its task from it, e.g. "summarize: ") and are truncated to
--max-length; targets become labels truncated to --max-target-length and padded with -100, which the loss
ignores. Evaluation and prediction generate (at most --max-target-length new tokens, --num-beams beams) through
GenerationTrainer, and each task scores the generated text against the raw references with its metric module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ftune import console
from ftune.config import TaskOptions, option
from ftune.data import (
    check_no_missing,
    check_split_filled,
    check_split_text,
    check_text_columns,
    column_list,
    pick_column,
    tokenize_rows,
)
from ftune.errors import UsageError
from ftune.tasks.base import PredictInput, PredictSetting, Task
from ftune.tasks.state import TaskState

# Models pretrained with task prefixes; the others (BART, Pegasus, Marian ...) read the bare source.
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")


@dataclass
class Seq2SeqOptions(TaskOptions):
    source_column: Optional[str] = option(None, "Column with the source text.", panel="Data")
    target_column: Optional[str] = option(None, "Column with the target text.", panel="Data")
    # A plain str, not Optional: an explicit "" must mean "no prefix", and None/"" would read as unset.
    source_prefix: str = option("auto", "Text put before each source; 'auto' is the task's prefix for T5-family "
                                        "models and nothing otherwise; '' for none.", panel="Data")
    max_target_length: int = option(128, "Longest target in tokens: labels are truncated to it and evaluation "
                                          "generates at most this many new tokens.", panel="Data", min=1)
    num_beams: int = option(1, "Beams when generating for evaluation (1: greedy).", min=1)

    defaults = {"model": "t5-small", "max_length": 512}

    def check(self, config):
        if self.source_column and self.source_column == self.target_column:
            return [f"--source-column and --target-column are both '{self.source_column}'; the target must come "
                    "from another column"]
        return []


@dataclass(frozen=True, kw_only=True)
class Seq2SeqState(TaskState):
    """What a seq2seq run derives: its columns (source, target), the prefix of its sources, its model's limits."""

    source_prefix: str                  # put before each source ('' for none); --source-prefix auto resolved
    model_type: str                     # the model's type (t5, bart ...)
    source_limit: Optional[int]         # the longest source the encoder takes (None: no fixed limit)


class Seq2SeqTask(Task):
    """Shared by the seq2seq tasks; a subclass names its columns, its prefix, its metric and its output name."""

    options_class = Seq2SeqOptions
    state_class = Seq2SeqState
    model_class = "AutoModelForSeq2SeqLM"
    peft_model_class = "AutoPeftModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    generates_text = True
    source_columns: tuple[str, ...] = ()      # detected when --source-column is not given
    target_columns: tuple[str, ...] = ()
    source_role = "source text"               # how messages name the columns
    target_role = "target text"
    output_name = "prediction"                # the key `ftune predict` writes the generated text under
    predict_inputs = (PredictInput("texts", "--text", "Input text (repeatable)."),)
    predict_settings = (
        PredictSetting("--max-new-tokens", "max_target_length", "Most tokens to generate per input (seq2seq "
                       "runs; default: the run's --max-target-length)."),
        PredictSetting("--num-beams", "num_beams", "Beams for generating (seq2seq runs; default: the run's "
                       "--num-beams)."),
    )

    # ---- what a subclass decides --------------------------------------------------------------------
    def auto_prefix(self, config, model_type: str) -> str:
        """The prefix `--source-prefix auto` stands for with this model."""
        return ""

    def check_input_length(self, config, tokenizer):
        """Sources longer than the encoder takes are cut at its limit, with a note (prepare_state)."""

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        opts = config.task_options
        source = pick_column(columns, opts.source_column, self.source_columns, what=self.source_role,
                             option="--source-column")
        others = columns if opts.target_column else [c for c in columns if c != source]
        target = pick_column(others, opts.target_column, self.target_columns, what=self.target_role,
                             option="--target-column")
        if target == source:
            raise UsageError(f"column '{source}' cannot be both the {self.source_role} and the {self.target_role}; "
                             "pass --source-column and --target-column")
        return {"source": source, "target": target}

    def prepare_state(self, config, split, columns):
        model_type, limit = seq2seq_model_info(self, self.model_source(config))
        check_split_text(split, _text_options(columns), lists=True)
        check_split_filled(split, list(dict.fromkeys(columns.values())))
        prefix = config.task_options.source_prefix
        if prefix == "auto":
            prefix = self.auto_prefix(config, model_type)
        if limit is not None and config.max_length > limit:
            console.note(f"--max-length {config.max_length} is more than {config.model} takes; sources are cut at "
                         f"{limit} tokens")
        return Seq2SeqState(columns=columns, source_prefix=prefix, model_type=model_type, source_limit=limit)

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        check_text_columns(rows, _text_options(state.columns), where, lists=True)
        check_no_missing(rows, list(state.columns.values()), where)

    # ---- features and training --------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        """Tokenized sources (with the prefix) and, except for prediction, labels; notes how many were cut."""
        source, target = state.columns["source"], state.columns["target"]
        prefix, max_source = state.source_prefix, source_length(config.max_length, state)
        max_target = config.task_options.max_target_length
        labelled = purpose != "predict" and target in rows.column_names

        def encode(batch):
            sources = [prefix + as_text(v) for v in batch[source]]
            features = tokenizer(sources, truncation=True, max_length=max_source)
            # Tokenized once more uncut, only to count what truncation dropped: the note tells the user.
            features["source_cut"] = [len(ids) > max_source for ids in tokenizer(sources)["input_ids"]]
            if labelled:
                targets = [as_text(v) for v in batch[target]]
                features["labels"] = tokenizer(text_target=targets, truncation=True,
                                               max_length=max_target)["input_ids"]
                features["target_cut"] = [len(ids) > max_target for ids in tokenizer(text_target=targets)["input_ids"]]
            return features

        features = tokenize_rows(rows, encode, config, desc="tokenizing")
        announce = {"train": "training", "eval": "held-out"}.get(purpose, "input")
        cut = sum(column_list(features, "source_cut"))
        if cut:
            console.note(f"{cut} of {len(features)} {announce} {self.source_role}s are longer than {max_source} "
                         "tokens (--max-length) and were truncated")
        cut = sum(column_list(features, "target_cut")) if "target_cut" in features.column_names else 0
        if cut:
            console.note(f"{cut} of {len(features)} {announce} {self.target_role}s are longer than {max_target} "
                         "tokens (--max-target-length) and were truncated")
        return features.remove_columns([c for c in ("source_cut", "target_cut") if c in features.column_names])

    def collator(self, config, tokenizer, model, pad_to_multiple_of):
        from transformers import DataCollatorForSeq2Seq

        # Labels are padded with -100, which the loss ignores; the model builds its decoder inputs from them.
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100,
                                      pad_to_multiple_of=pad_to_multiple_of)

    def trainer_class(self):
        from ftune.tasks.seq2seq.trainer import GenerationTrainer

        return GenerationTrainer

    def trainer_kwargs(self, config, state):
        return {"generation_kwargs": self.generation_kwargs(config, state)}

    def generation_kwargs(self, config, state) -> dict[str, Any]:
        """The one place generation is set up: evaluation during training, `ftune eval` and `ftune predict`."""
        opts = config.task_options
        return {"max_new_tokens": opts.max_target_length, "num_beams": opts.num_beams}

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        texts = decode_ids(predictions, tokenizer)
        counts = generated_counts(predictions, tokenizer)
        return [{"prediction": text, "generated_tokens": n} for text, n in zip(texts, counts)]

    def references(self, config, state, rows):
        return [as_text(v) for v in column_list(rows, state.columns["target"])]

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, config, state, options):
        texts = options.get("texts") or []
        if not texts:
            raise UsageError(f"nothing to do: pass --text (a {self.source_role}, repeatable) or --input FILE")
        return [{state.columns["source"]: t} for t in texts]

    def check_inputs(self, config, state, inputs, names):
        column = state.columns["source"]
        if column not in inputs[0]:
            raise UsageError(f"the input has no column '{column}' (the {self.source_role}s this run reads); the "
                             f"input has: {', '.join(inputs[0])}")
        for row, name in zip(inputs, names):
            value = row.get(column)
            if value is None or not as_text(value).strip():
                raise UsageError(f"{name} has no text in column '{column}'; give every row a {self.source_role}")

    def prediction_fields(self, output):
        return {self.output_name: output["prediction"]}

    def model_card_usage(self, config, state, run_path):
        return generation_usage(self, config, state, run_path)


# --------------------------------------------------------------------------------------------------
# Helpers


def generation_usage(task: Task, config, state: Seq2SeqState, run_path: str, tokenizer_args: Optional[dict] = None,
                     generate_args: Optional[dict] = None) -> str:
    """Python for the model card that loads a seq2seq run and generates from one text with its prefix;
    `tokenizer_args` go to the tokenizer (a translation model's languages), `generate_args` to `generate`."""
    cls = task.peft_model_class if config.lora else task.model_class
    module = "peft" if config.lora else "transformers"
    tokenizer_extra = "".join(f", {k}={v!r}" for k, v in (tokenizer_args or {}).items())
    generate_extra = "".join(f", {k}={v}" for k, v in (generate_args or {}).items())
    return (f"from {module} import {cls}\nfrom transformers import AutoTokenizer\n\n"
            f"model = {cls}.from_pretrained(\"{run_path}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\"{tokenizer_extra})\n"
            f"inputs = tokenizer([{state.source_prefix!r} + text], truncation=True, return_tensors=\"pt\")\n"
            f"output = tokenizer.decode(model.generate(**inputs, max_new_tokens="
            f"{config.task_options.max_target_length}{generate_extra})[0], skip_special_tokens=True)")


def seq2seq_model_info(task: Task, source) -> tuple[str, Optional[int]]:
    """The model type of `source` and the longest input its encoder takes (None: no fixed limit).

    Raises UsageError naming the ftune command that fits a model that is not seq2seq.
    """
    from transformers.models.auto import modeling_auto as auto

    if source.gguf or source.name.lower().endswith(".gguf"):
        raise UsageError(f"{source.name} is a GGUF causal LM, not a seq2seq model; fine-tune it with ftune lm, or "
                         f"pass a seq2seq model (T5, BART, ...) to --model")
    model_config = source.load_config()
    kind = model_config.model_type
    if kind not in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        # Masked LM first: BERT-like encoders also have a causal-LM head class, GPT-2 also a QA head class.
        if kind in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            fits = "an encoder without a decoder: fine-tune it with ftune classify or ftune qa"
        elif kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            fits = "a decoder-only causal LM: fine-tune it with ftune lm (prompt/completion columns can hold " \
                   f"each {task.source_role} and {task.target_role})"
        else:
            fits = f"not a model ftune {task.name} can train"
        raise UsageError(f"{source.name} is a {kind} model, not a seq2seq model; it is {fits}, or pass a seq2seq "
                         "model (T5, BART, ...) to --model")
    encoder = getattr(model_config, "encoder", model_config)  # EncoderDecoderModel: the encoder's own config
    limit = getattr(encoder, "max_position_embeddings", None) or getattr(encoder, "n_positions", None)
    if kind in T5_FAMILY:
        limit = None  # relative position buckets: no hard limit, --max-length alone decides
    return kind, limit


def source_length(max_length: int, state: Seq2SeqState) -> int:
    """The longest source in tokens: --max-length, within what the encoder takes."""
    limit = state.source_limit
    return min(max_length, limit) if limit else max_length


def _text_options(columns) -> dict[str, str]:
    """The source and target columns and the options that choose them; none for a column of {language: text}
    dicts (translate checks those itself)."""
    if columns["source"] == columns["target"]:
        return {}
    return {columns["source"]: "--source-column", columns["target"]: "--target-column"}


def as_text(value: Any) -> str:
    """A cell as text; a list of sentences becomes one sentence per line (as rougeLsum reads them)."""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def decode_ids(token_ids, tokenizer) -> list[str]:
    """Token ids (padded with -100 across batches) to text without special tokens."""
    import numpy as np

    ids = np.where(np.asarray(token_ids) < 0, tokenizer.pad_token_id, token_ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generated_counts(token_ids, tokenizer) -> list[int]:
    """Generated tokens per row, padding (and the -100 fill between batches) not counted."""
    import numpy as np

    ids = np.asarray(token_ids)
    if ids.size == 0:
        return [0] * len(ids)
    return ((ids != tokenizer.pad_token_id) & (ids >= 0)).sum(-1).tolist()


def mean_generated_length(outputs: list[dict[str, Any]]) -> float:
    """eval_gen_len: the mean generated length in tokens."""
    return float(sum(o["generated_tokens"] for o in outputs) / max(len(outputs), 1))


def examples_table(outputs: list[dict[str, Any]], references: list[str], count: int = 3, width: int = 60) -> str:
    """The first few generated texts beside their references."""
    from ftune.console import table

    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[:width - 3] + "..."

    return table(["prediction", "reference"], [(short(o["prediction"]), short(r))
                                               for o, r in zip(outputs[:count], references)], title="examples")
