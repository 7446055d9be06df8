"""`ftune ner`: token classification — a tag for every word of a sentence (named entities, role labels ...).

The data layouts and the words and tags of each row are in ftune.tasks.ner.data; sub-word alignment and the
windows of long sentences in ftune.tasks.ner.windows; the entities `ftune predict` prints in
ftune.tasks.ner.entities. Tags come from the data (ClassLabel names, else the sorted distinct tags) in any
scheme (BIO, IOB1, IO, BIOES); their names go into the model config's id2label/label2id, so a full run also
serves the transformers `token-classification` pipeline. Each word's prediction is the tag with the highest
softmax probability at its first sub-token, with that probability as its score. Scores come from ftune's
`seqeval_ner` metric module: entity-level precision/recall/F1 (seqeval's default, conlleval-like mode) and
word accuracy, 0-1; the best checkpoint is the one with the best entity F1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ftune.config import TaskOptions, option
from ftune.data import check_split_filled, check_split_text, column_list, pick_column, tokenize_rows
from ftune.errors import UsageError
from ftune.tasks.base import PredictInput, Scores, Task, first_array, softmax
from ftune.tasks.labels import (
    check_known,
    class_names,
    feature_names,
    label_config,
    labels_fact,
    merged_names,
    peft_labels_usage,
    resolve_variants,
)
from ftune.tasks.ner.data import check_sentences, joined_spans, load_conll, row_tags, row_tokens, split_words, values
from ftune.tasks.state import TaskState

TOKENS_COLUMNS = ("tokens", "words")
TAGS_COLUMNS = ("ner_tags", "tags", "labels")
TEXT_INPUT = "text"     # the input column of `ftune predict --text` and of --input files with free text


@dataclass
class NerOptions(TaskOptions):
    tokens_column: Optional[str] = option(None, "Column with each sentence's words, a list (detected: tokens, "
                                                "words).", panel="Data")
    tags_column: Optional[str] = option(None, "Column with each word's tag, a list of names or ClassLabel ids "
                                              "(detected: ner_tags, tags, labels).", panel="Data")
    label_all_tokens: bool = option(False, "Train every sub-token of a word on the word's tag (a B- tag's "
                                           "continuations on the matching I- tag), not only the first.",
                                    panel="Data")
    merge_label_variants: bool = option(False, "Tags that differ only by case or surrounding spaces ('B-PER', "
                                               "'b-per') are one tag, named by their most common spelling in the "
                                               "training rows; otherwise they are an error.", panel="Data")

    defaults = {"model": "bert-base-cased"}

    def check(self, config):
        if self.tokens_column and self.tokens_column == self.tags_column:
            return [f"--tokens-column and --tags-column are both '{self.tokens_column}'; the tags must come from "
                    "another column"]
        return []


@dataclass(frozen=True, kw_only=True)
class NerState(TaskState):
    """What a ner run derives: its columns (tokens, tags) and its tags."""

    labels: list[str]                   # the tag names in id order


class NerTask(Task):
    name = "ner"
    summary = "Fine-tune token classification (named entities, one tag per word)."
    options_class = NerOptions
    state_class = NerState
    model_class = "AutoModelForTokenClassification"
    peft_model_class = "AutoPeftModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"  # peft then also trains and saves the classifier head
    main_metric = "f1"
    metric_module = "seqeval_ner"
    reported_metrics = ("precision", "recall", "f1", "accuracy")
    predict_inputs = (PredictInput("texts", "--text", "Input text (repeatable)."),)

    # ---- data -------------------------------------------------------------------------------------
    def load_source(self, config, data, data_config):
        conll = load_conll(data)
        return conll if conll is not None else super().load_source(config, data, data_config)

    def resolve_columns(self, config, columns):
        opts = config.task_options
        tokens = pick_column(columns, opts.tokens_column, TOKENS_COLUMNS, what="words of each sentence",
                             option="--tokens-column")
        others = columns if opts.tags_column else [c for c in columns if c != tokens]
        tags = pick_column(others, opts.tags_column, TAGS_COLUMNS, what="tags", option="--tags-column")
        if tags == tokens:
            raise UsageError(f"column '{tokens}' cannot hold both the words and the tags; pass --tokens-column and "
                             "--tags-column")
        return {"tokens": tokens, "tags": tags}

    def prepare_state(self, config, split, columns):
        check_split_text(split, {columns["tokens"]: "--tokens-column"}, lists=True)
        check_split_filled(split, [columns["tokens"], columns["tags"]])
        _, train_tags = check_sentences(split.train, columns, "the training split", ids=split.train_names)
        _, eval_tags = check_sentences(split.eval, columns, "the held-out split", ids=split.eval_names)
        feature = split.train.features[columns["tags"]]
        renamed = {}
        if feature_names(feature) is None:  # a ClassLabel's names are the data's own tags, as they are
            renamed = resolve_variants([(train_tags, split.train_names, "the training split"),
                                        (eval_tags, split.eval_names, "the held-out split")], columns["tags"],
                                       merge=config.task_options.merge_label_variants, what="tag")
        values = [renamed.get(tag, tag) for tags in train_tags for tag in tags]
        labels = class_names(values, feature, column=columns["tags"])
        if len(labels) < 2:
            raise UsageError(f"the training rows have one tag only ({labels[0]!r} in column '{columns['tags']}'); "
                             "token classification needs at least two")
        unseen = sorted({renamed.get(tag, tag) for tags in eval_tags for tag in tags} - set(labels))
        if unseen:
            raise UsageError(f"held-out tags never seen in training: {', '.join(unseen[:10])}; add training rows "
                             f"with them or drop those rows (training tags: {', '.join(labels[:20])})")
        return NerState(columns=columns, labels=labels)

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        check_sentences(rows, state.columns, where)
        check_known({tag for sentence in self.references(config, state, rows) for tag in sentence}, state.labels,
                    where)

    # ---- model ------------------------------------------------------------------------------------
    def base_model_kwargs(self, state):
        # ignore_mismatched_sizes: a checkpoint already tuned on other tags gets a new head.
        return {**label_config(state.labels), "ignore_mismatched_sizes": True}

    def load_model(self, config, tokenizer, state):
        from ftune.tasks.ner.windows import require_fast_tokenizer

        require_fast_tokenizer(tokenizer, config.model)  # before any weights are loaded
        return super().load_model(config, tokenizer, state)

    # ---- features ---------------------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        """Windows of each sentence's words (ftune.tasks.ner.windows), with labels except for prediction, and
        the columns `decode` reads (WORD_INFO_COLUMNS)."""
        from ftune.tasks.ner.windows import encode_sentences, require_fast_tokenizer

        require_fast_tokenizer(tokenizer, "this run's model")
        columns, labels = state.columns, state.labels
        max_length, label_all_tokens = config.max_length, config.task_options.label_all_tokens
        label_ids = {name: i for i, name in enumerate(labels)}
        labelled = purpose != "predict" and columns["tags"] in rows.column_names
        continuation = {label_ids[t]: label_ids["I-" + t[2:]] for t in labels
                        if t.startswith("B-") and "I-" + t[2:] in label_ids}

        def encode(batch, indices):
            batch_rows = _BatchRows(batch, rows.features)
            tag_ids = None
            if labelled:
                tag_ids = [[label_ids[t] for t in tags] for tags in _tags(config, state, batch_rows)]
            windows = encode_sentences(tokenizer, sentence_words(batch_rows, columns), max_length=max_length,
                                       tag_ids=tag_ids, continuation=continuation, label_all_tokens=label_all_tokens)
            windows["example_index"] = [indices[i] for i in windows["example_index"]]
            return windows

        return tokenize_rows(rows, encode, config, desc="aligning words and sub-tokens", with_indices=True)

    def model_inputs(self, features):
        from ftune.tasks.ner.windows import WORD_INFO_COLUMNS

        return features.remove_columns([c for c in WORD_INFO_COLUMNS if c in features.column_names])

    def collator(self, config, tokenizer, model, pad_to_multiple_of):
        from transformers import DataCollatorForTokenClassification

        # Labels are padded with -100, which the loss ignores.
        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        """Per row: its words (`tokens`), one tag per word (`prediction`), each tag's probability (`scores`);
        rows of free text also get the text and each word's character span in it (`spans`)."""
        import numpy as np

        from ftune.tasks.ner.windows import word_logits

        labels, columns = state.labels, state.columns
        words = sentence_words(rows, columns)
        texts = values(rows, TEXT_INPUT) if columns["tokens"] not in rows.column_names else None
        per_word = word_logits(column_list(features, "example_index"), column_list(features, "word_index"),
                               first_array(predictions), [len(w) for w in words])
        outputs = []
        for r, (sentence, logits) in enumerate(zip(words, per_word)):
            probs = softmax(np.stack(logits))
            best = [int(p.argmax()) for p in probs]
            out = {"prediction": [labels[k] for k in best], "tokens": sentence,
                   "scores": [float(p[k]) for p, k in zip(probs, best)]}
            if texts is not None:
                out.update(text=str(texts[r]), spans=split_words(str(texts[r]))[1])
            outputs.append(out)
        return outputs

    def references(self, config, state, rows):
        return _tags(config, state, rows)

    def metrics(self, config, state, outputs, references, features):
        from ftune.metrics import load_metric

        scores = load_metric(self.metric_module).compute(predictions=[o["prediction"] for o in outputs],
                                                    references=references)
        per_type = scores.pop("per_type")
        return Scores(metrics={**scores, "words": sum(len(r) for r in references)},
                      details={"per_type": per_type}, table=_per_type_table(per_type))

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, config, state, options):
        texts = options.get("texts") or []
        if not texts:
            raise UsageError("nothing to predict: pass --text (repeatable) or --input FILE")
        return [{TEXT_INPUT: t} for t in texts]

    def check_inputs(self, config, state, inputs, names):
        tokens = state.columns["tokens"]
        key = tokens if tokens in inputs[0] else TEXT_INPUT if TEXT_INPUT in inputs[0] else None
        if key is None:
            raise UsageError(f"the input has no column '{tokens}' (a list of words) or '{TEXT_INPUT}' (free text); "
                             f"the input has: {', '.join(inputs[0])}")
        for row, name in zip(inputs, names):
            value = row.get(key)
            if value is None:
                words = []
            elif key == TEXT_INPUT:
                words = split_words(str(value))[0]
            else:
                words = row_tokens({key: [value]}, key)[0]
            if not words:
                raise UsageError(f"{name} has no words in column '{key}'; give every row a text or a list of words")

    def prediction_fields(self, output):
        """The words, their tags and the entities; a row given as words is shown as the words joined by spaces,
        and its entities' start/end count characters in that text (as the pipeline's is_split_into_words)."""
        from ftune.tasks.ner.entities import group_entities

        words, tags = output["tokens"], output["prediction"]
        text, spans = (output["text"], output["spans"]) if "spans" in output else (" ".join(words),
                                                                                  joined_spans(words))
        return {"tokens": words, "tags": tags, "entities": group_entities(text, tags, output["scores"], spans)}

    def pictures(self, config, state, evaluation):
        from ftune.pictures import label_scores_picture

        per_type = evaluation.details.get("per_type") or {}
        return [label_scores_picture("entity_f1.png", "F1 per entity type", {k: f["f1"] for k, f in per_type.items()},
                                     "f1", support={k: f["support"] for k, f in per_type.items()})] if per_type else []

    def model_card_facts(self, config, state):
        return [labels_fact(state.labels)]

    def model_card_usage(self, config, state, run_path):
        if not config.lora:
            return (f"from transformers import pipeline\n\ntagger = pipeline(\"token-classification\", "
                    f"model=\"{run_path}\", aggregation_strategy=\"simple\")\ntagger(\"Ada Lovelace moved to Paris\")")
        return peft_labels_usage(self.peft_model_class, run_path, state.labels)


class _BatchRows:
    """A batch of `datasets.map` as the row helpers read a Dataset: columns by name, and the features."""

    def __init__(self, batch, features):
        self.batch, self.features, self.column_names = batch, features, list(batch)

    def __getitem__(self, column):
        return self.batch[column]


def _tags(config, state, rows) -> list[list[str]]:
    """Each row's tag names, merged variants named as the run names them (--merge-label-variants)."""
    tags = row_tags(rows, state.columns["tags"])
    if getattr(config.task_options, "merge_label_variants", False):
        rename = merged_names(state.labels)
        tags = [[rename(tag) for tag in sentence] for sentence in tags]
    return tags


def sentence_words(rows, columns: dict[str, str]) -> list[list[str]]:
    """Each row's words: its tokens column, else its free text split into words (ftune.tasks.ner.data)."""
    if columns["tokens"] in rows.column_names:
        return row_tokens(rows, columns["tokens"])
    return [split_words(str(text))[0] for text in values(rows, TEXT_INPUT)]


def _per_type_table(per_type: dict[str, dict]) -> str:
    from ftune.console import table

    rows = [(kind, f"{f['precision']:.4f}", f"{f['recall']:.4f}", f"{f['f1']:.4f}", f["support"])
            for kind, f in per_type.items()]
    return table(["entity type", "precision", "recall", "f1", "support"], rows, title="per entity type")


TASK = NerTask()
