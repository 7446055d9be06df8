"""`ftune summarize`: fine-tune a seq2seq model (T5, BART, an EncoderDecoderModel ...) to write summaries.

Sources get the run's prefix ("summarize: " for T5-family models by default) and are truncated to
--max-length; summaries become labels truncated to --max-target-length, padded with -100 so the loss
ignores the padding. Evaluation generates (at most --max-target-length new tokens, --num-beams beams) and
scores the generated text against the raw reference summaries with ftune's ROUGE metric module.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from ftune import distributed as dist
from ftune.data import check_no_missing, pick_column
from ftune.errors import UsageError
from ftune.report import echo
from ftune.tasks.base import Evaluation, Task

SOURCE_COLUMNS = ("article", "document", "text", "dialogue")
TARGET_COLUMNS = ("highlights", "summary")
# Models pretrained with task prefixes; the others (BART, Pegasus ...) read the bare document.
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")
T5_PREFIX = "summarize: "
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class SummarizeTask(Task):
    name = "summarize"
    model_class = "AutoModelForSeq2SeqLM"
    peft_model_class = "AutoPeftModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    main_metric = "rougeL"

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        source = pick_column(columns, config.source_column, SOURCE_COLUMNS, what="document to summarise",
                             option="--source-column")
        others = columns if config.target_column else [c for c in columns if c != source]
        target = pick_column(others, config.target_column, TARGET_COLUMNS, what="summary",
                             option="--target-column")
        if target == source:
            raise UsageError(f"column '{source}' cannot be both the document and the summary; pass "
                             "--source-column and --target-column")
        return {"source": source, "target": target}

    def prepare_state(self, config, split, columns):
        model_type, limit = seq2seq_model_info(config.model)
        for name, ds in (("the training split", split.train), ("the held-out split", split.eval)):
            check_no_missing(ds, list(columns.values()), name)
        prefix = config.source_prefix
        if prefix == "auto":
            prefix = T5_PREFIX if model_type in T5_FAMILY else ""
        if limit is not None and config.max_length > limit and dist.is_main_process():
            echo(f"note: --max-length {config.max_length} is more than {config.model} takes; sources are cut "
                 f"at {limit} tokens")
        return {"columns": columns, "source_prefix": prefix, "model_type": model_type, "source_limit": limit}

    def check_eval_rows(self, config, state, rows, where):
        super().check_eval_rows(config, state, rows, where)
        check_no_missing(rows, list(state["columns"].values()), where)

    # ---- features and training --------------------------------------------------------------------
    def preprocess(self, config, tokenizer, ds, state, *, training):
        return self._encode(config, tokenizer, ds, state, "training" if training else "held-out")

    def _encode(self, config, tokenizer, ds, state, announce_as: Optional[str]):
        """Tokenized sources (with the prefix) and labels; notes how many were truncated when `announce_as`."""
        source, target = state["columns"]["source"], state["columns"]["target"]
        prefix, max_source = state["source_prefix"], source_length(config.max_length, state)

        def encode(batch):
            sources = [prefix + as_text(v) for v in batch[source]]
            features = tokenizer(sources, truncation=True, max_length=max_source)
            # Tokenized once more uncut, only to count what truncation dropped: the note tells the user.
            features["source_cut"] = [len(ids) > max_source for ids in tokenizer(sources)["input_ids"]]
            if target in batch:
                targets = [as_text(v) for v in batch[target]]
                features["labels"] = tokenizer(text_target=targets, truncation=True,
                                               max_length=config.max_target_length)["input_ids"]
                features["target_cut"] = [len(ids) > config.max_target_length
                                          for ids in tokenizer(text_target=targets)["input_ids"]]
            return features

        features = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenizing")
        if announce_as and dist.is_main_process():
            cut = sum(features["source_cut"])
            if cut:
                echo(f"note: {cut} of {len(features)} {announce_as} sources are longer than {max_source} tokens "
                     f"(--max-length) and were truncated")
            cut = sum(features["target_cut"]) if "target_cut" in features.column_names else 0
            if cut:
                echo(f"note: {cut} of {len(features)} {announce_as} summaries are longer than "
                     f"{config.max_target_length} tokens (--max-target-length) and were truncated")
        return features.remove_columns([c for c in ("source_cut", "target_cut") if c in features.column_names])

    def collator(self, config, tokenizer, model, pad_to_multiple_of):
        from transformers import DataCollatorForSeq2Seq

        # Labels are padded with -100, which the loss ignores; the model builds its decoder inputs from them.
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100,
                                      pad_to_multiple_of=pad_to_multiple_of)

    def arguments_class(self):
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments

    def trainer_class(self):
        return _summarization_trainer_class()

    def training_arguments(self, config):
        # Evaluation generates token ids instead of keeping logits (batch x length x vocabulary floats).
        return {"predict_with_generate": True, "generation_max_length": config.max_target_length,
                "generation_num_beams": config.num_beams}

    def compute_metrics(self, state):
        """ROUGE during training (it picks the best checkpoint), against the tokenized references: the raw
        references are scored by `evaluate` at the end. The trainer passes its tokenizer in."""
        metric = _metric()

        def compute(eval_pred, tokenizer):
            predictions = decode(eval_pred.predictions, tokenizer)
            references = decode(eval_pred.label_ids, tokenizer)
            scores = metric.compute(predictions=predictions, references=references)
            return {**{k: scores[k] for k in ROUGE_TYPES},
                    "gen_len": generated_length(eval_pred.predictions, tokenizer)}

        return compute

    # ---- scoring ----------------------------------------------------------------------------------
    def evaluate(self, trainer, tokenizer, config, rows, state) -> Evaluation:
        # The training run already announced its held-out truncation; `ftune eval` (no train set) announces it.
        features = self._encode(config, tokenizer, rows, state,
                                "held-out" if trainer.train_dataset is None else None)
        output = trainer.predict(features, metric_key_prefix="eval")
        # Ranks may pad the last batch with repeated rows; the first len(rows) are the rows in order.
        generated = output.predictions[:len(rows)]
        predictions = decode(generated, tokenizer)
        references = [as_text(v) for v in rows[state["columns"]["target"]]]
        scores = _metric().compute(predictions=predictions, references=references)
        metrics = {f"eval_{k}": scores[k] for k in ROUGE_TYPES}
        metrics["eval_gen_len"] = generated_length(generated, tokenizer)
        if "eval_loss" in output.metrics:
            metrics["eval_loss"] = float(output.metrics["eval_loss"])
        metrics["eval_samples"] = len(rows)
        ids = _row_ids(rows)
        rows_out = [{"id": ids[i], "prediction": p, "reference": r}
                    for i, (p, r) in enumerate(zip(predictions, references))]
        return Evaluation(metrics=metrics, predictions=rows_out, table=_examples_table(rows_out))

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, state, options):
        texts = options.get("texts") or []
        if not texts:
            raise UsageError("nothing to summarise: pass --text DOCUMENT (repeatable) or --input FILE")
        return [{state["columns"]["source"]: t} for t in texts]

    def predict(self, model, tokenizer, config, state, inputs, batch_size):
        import torch

        column = _input_column(state, inputs[0])
        prefix = state["source_prefix"]
        max_source = source_length(config["max_length"], state)
        # `ftune predict --max-new-tokens/--num-beams` override the run's evaluation settings.
        max_new_tokens = config.get("max_new_tokens") or config["max_target_length"]
        num_beams = config.get("num_beams") or 1
        device = next(model.parameters()).device
        results = []
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            encoded = tokenizer([prefix + as_text(r[column]) for r in batch], truncation=True,
                                max_length=max_source, padding=True, return_tensors="pt").to(device)
            with torch.no_grad():
                generated = model.generate(**encoded, max_new_tokens=max_new_tokens, num_beams=num_beams)
            for row, summary in zip(batch, decode(generated.cpu().numpy(), tokenizer)):
                results.append({**row, "summary": summary})
        return results

    def model_card_usage(self, run_path, lora, state):
        cls = self.peft_model_class if lora else self.model_class
        module = "peft" if lora else "transformers"
        return (f"from {module} import {cls}\nfrom transformers import AutoTokenizer\n\n"
                f"model = {cls}.from_pretrained(\"{run_path}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\")\n"
                f"inputs = tokenizer([{state.get('source_prefix', '')!r} + document], truncation=True, "
                f"return_tensors=\"pt\")\n"
                f"summary = tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0], "
                f"skip_special_tokens=True)")


# --------------------------------------------------------------------------------------------------
# Helpers


def seq2seq_model_info(name: str) -> tuple[str, Optional[int]]:
    """The model type of `name` and the longest input its encoder takes (None: no fixed limit).

    Raises UsageError naming the ftune command that fits a model that is not seq2seq.
    """
    if name.lower().endswith(".gguf"):
        raise UsageError(f"{name} is a GGUF causal LM, not a seq2seq model; fine-tune it with ftune lm, or pass a "
                         "seq2seq model (T5, BART, ...) to --model")
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto as auto

    try:
        model_config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the configuration of model {name}: {str(exc).strip().splitlines()[0]}") from None
    kind = model_config.model_type
    if kind not in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        # Masked LM first: BERT-like encoders also have a causal-LM head class, GPT-2 also a QA head class.
        if kind in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            fits = "an encoder without a decoder: fine-tune it with ftune classify or ftune qa"
        elif kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            fits = "a decoder-only causal LM: fine-tune it with ftune lm (prompt/completion columns can hold " \
                   "documents and summaries)"
        else:
            fits = "not a model ftune summarize can train"
        raise UsageError(f"{name} is a {kind} model, not a seq2seq model; it is {fits}, or pass a seq2seq model "
                         "(T5, BART, ...) to --model")
    encoder = getattr(model_config, "encoder", model_config)  # EncoderDecoderModel: the encoder's own config
    limit = getattr(encoder, "max_position_embeddings", None) or getattr(encoder, "n_positions", None)
    if kind in T5_FAMILY:
        limit = None  # relative position buckets: no hard limit, --max-length alone decides
    return kind, limit


def source_length(max_length: int, state: dict[str, Any]) -> int:
    limit = state.get("source_limit")
    return min(max_length, limit) if limit else max_length


def as_text(value: Any) -> str:
    """A cell as text; a list of sentences becomes one sentence per line (as rougeLsum reads them)."""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def decode(token_ids, tokenizer) -> list[str]:
    """Token ids (padded with -100 across batches) to text without special tokens."""
    import numpy as np

    ids = np.where(np.asarray(token_ids) < 0, tokenizer.pad_token_id, token_ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generated_length(token_ids, tokenizer) -> float:
    """Mean generated length in tokens, padding (and the -100 fill between batches) not counted."""
    import numpy as np

    ids = np.asarray(token_ids)
    if len(ids) == 0:
        return 0.0
    return float(((ids != tokenizer.pad_token_id) & (ids >= 0)).sum(-1).mean())


def _input_column(state: dict[str, Any], row: dict[str, Any]) -> str:
    column = state["columns"]["source"]
    if column in row:
        return column
    found = next((c for c in row if c.lower() in SOURCE_COLUMNS), None)
    if found is None:
        raise UsageError(f"the input has no column '{column}' (the documents this run summarises); the input has: "
                         f"{', '.join(row)}")
    return found


@functools.cache
def _summarization_trainer_class():
    """ftune's Seq2SeqTrainer (rows scored in order), whose metrics function also gets the tokenizer (to decode
    generated ids) and whose generation_max_length counts new tokens, as --max-target-length promises."""
    from ftune.trainers import FtuneSeq2SeqTrainer

    class SummarizationTrainer(FtuneSeq2SeqTrainer):
        def __init__(self, *args, compute_metrics=None, **kwargs):
            super().__init__(*args, **kwargs)
            if compute_metrics is not None:
                self.compute_metrics = functools.partial(compute_metrics, tokenizer=self.processing_class)

        def _generation(self, gen_kwargs):
            # Seq2SeqTrainer would pass it as max_length, which also counts the decoder start token and loses to
            # a max_new_tokens in the model's generation config.
            if gen_kwargs.get("max_length") is None and self.args.generation_max_length is not None:
                gen_kwargs.setdefault("max_new_tokens", self.args.generation_max_length)
            return gen_kwargs

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **self._generation(gen_kwargs))

        def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test", **gen_kwargs):
            return super().predict(test_dataset, ignore_keys, metric_key_prefix, **self._generation(gen_kwargs))

    return SummarizationTrainer


def _metric():
    from ftune.metrics import load_metric

    return load_metric("rouge")


def _row_ids(rows) -> list[Any]:
    for name in ("id", "idx", "guid"):
        if name in rows.column_names:
            return list(rows[name])
    return list(range(len(rows)))


def _examples_table(rows: list[dict[str, Any]], count: int = 3, width: int = 60) -> str:
    from ftune.report import table

    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[:width - 3] + "..."

    return table(["id", "prediction", "reference"], [(r["id"], short(r["prediction"]), short(r["reference"]))
                                                   for r in rows[:count]], title="examples")


TASK = SummarizeTask()
