"""`ftune classify`: sequence classification of single texts or text pairs (e.g. sentiment, NLI, topics, scores).

Three problem types (`--problem-type`, ftune.tasks.classify.problems): single-label (one class per row, the
default), multi-label (a set of classes per row) and regression (one number per row). Class names go into the
model config's id2label/label2id (ftune.tasks.labels), so the saved model and the `text-classification`
pipeline speak them. Single-label runs may weigh their classes in the loss (`--class-weights`,
ftune.tasks.classify.weights), through the task's Trainer (ftune.tasks.classify.trainer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ftune.config import TaskOptions, option
from ftune.data import (
    check_no_missing,
    check_split_filled,
    check_split_text,
    check_text_columns,
    pick_column,
    tokenize_rows,
    with_column,
)
from ftune.errors import UsageError
from ftune.tasks.base import PredictInput, PredictSetting, Task
from ftune.tasks.classify.problems import MULTI_LABEL, PROBLEMS, REGRESSION, SINGLE_LABEL, ClassifyState
from ftune.tasks.classify.weights import parse_weight_spec, resolve_class_weights
from ftune.tasks.labels import labels_fact, peft_labels_usage

TEXT_COLUMNS = ("text", "sentence", "sentence1", "premise", "question1", "review", "content", "document")
PAIR_OF = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2", "question": "sentence"}
LABEL_COLUMNS = ("label", "labels", "class", "category", "sentiment", "rating", "target", "score")
DEFAULT_THRESHOLD = 0.5
DEFAULT_SEPARATOR = ","


@dataclass
class ClassifyOptions(TaskOptions):
    text_column: Optional[str] = option(None, "Column with the text (detected: text, sentence, sentence1, "
                                              "premise, question1, review, content).", panel="Data")
    text_pair_column: Optional[str] = option(None, "Column with the second text of a pair (detected: "
                                                   "sentence2, hypothesis, question2).", panel="Data")
    label_column: Optional[str] = option(None, "Column with the label: a class, a list of classes "
                                               "(multi-label) or a number (regression) (detected: label, labels, "
                                               "class, category, sentiment, rating, target, score).", panel="Data")
    problem_type: str = option(SINGLE_LABEL, "single-label (one class per row), multi-label (a list of classes "
                                             "per row, or a delimited string) or regression (one number per row).",
                               panel="Classification", choices=(SINGLE_LABEL, MULTI_LABEL, REGRESSION))
    label_separator: str = option(DEFAULT_SEPARATOR, "multi-label: the separator of labels given as one string "
                                                     "(JSON lists need none).", panel="Classification")
    threshold: float = option(DEFAULT_THRESHOLD, "multi-label: a label is predicted when its sigmoid probability "
                                                 "is at least this.", panel="Classification", min=0.0, max=1.0)
    class_weights: Optional[str] = option(None, "single-label: weigh each class in the loss, 'balanced' "
                                                "(n_rows / (n_classes x class rows), from the training rows) or "
                                                "label=weight,... (unnamed labels: 1).", panel="Classification")
    merge_label_variants: bool = option(False, "Labels that differ only by case or surrounding spaces ('law', "
                                               "' law', 'Law') are one class, named by their most common spelling "
                                               "in the training rows (without spaces); otherwise they are an "
                                               "error.", panel="Classification")

    def check(self, config) -> list[str]:
        problems = []
        if self.problem_type != MULTI_LABEL:
            if self.threshold != DEFAULT_THRESHOLD:
                problems.append("--threshold applies to --problem-type multi-label only; drop it")
            if self.label_separator != DEFAULT_SEPARATOR:
                problems.append("--label-separator applies to --problem-type multi-label only; drop it")
        if not self.label_separator:
            problems.append("--label-separator is empty; give the character(s) between labels, e.g. ';'")
        if self.class_weights is not None:
            problems += self._class_weight_problems()
        if self.merge_label_variants and self.problem_type == REGRESSION:
            problems.append("--merge-label-variants merges class labels, and regression has none; drop it")
        return problems

    def _class_weight_problems(self) -> list[str]:
        if self.problem_type == MULTI_LABEL:
            return ["--class-weights weighs the classes of single-label classification; drop it for multi-label "
                    "data (a lower --threshold favours rare labels)"]
        if self.problem_type == REGRESSION:
            return ["--class-weights weighs classes, and regression has none; drop it"]
        try:
            parse_weight_spec(self.class_weights)
        except ValueError as exc:
            return [f"--class-weights: {exc}"]
        return []


def problem_of(state: ClassifyState):
    """The run's problem type (ftune.tasks.classify.problems)."""
    return PROBLEMS[state.problem_type]


class ClassifyTask(Task):
    name = "classify"
    summary = "Fine-tune sequence classification: single-label, multi-label or regression (texts or pairs)."
    options_class = ClassifyOptions
    state_class = ClassifyState
    model_class = "AutoModelForSequenceClassification"
    peft_model_class = "AutoPeftModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    main_metric = "f1"
    predict_inputs = (PredictInput("texts", "--text", "Input text (repeatable)."),
                      PredictInput("text_pairs", "--text-pair", "Second text of a pair, one per --text."))
    predict_settings = (PredictSetting("--threshold", "threshold", "Probability from which a label is "
                                       "predicted (multi-label runs; default: the run's).", float),)

    # ---- data -------------------------------------------------------------------------------------
    def resolve_columns(self, config, columns):
        opts = config.task_options
        text = pick_column(columns, opts.text_column, TEXT_COLUMNS, what="text", option="--text-column")
        pair_candidates = [PAIR_OF[text.lower()]] if text.lower() in PAIR_OF and not opts.text_column else []
        pair = pick_column(columns, opts.text_pair_column, pair_candidates, what="second text",
                           option="--text-pair-column", required=False)
        label = pick_column([c for c in columns if c not in (text, pair)] if not opts.label_column else columns,
                            opts.label_column, LABEL_COLUMNS, what="label", option="--label-column")
        if label in (text, pair):
            raise UsageError(f"column '{label}' cannot be both the label and a text column")
        return {"text": text, "text_pair": pair, "label": label}

    def stratify_by(self, config, columns):
        return PROBLEMS[config.task_options.problem_type].stratify_by(config, columns["label"])

    def best_metric(self, config):
        if config.task_options.problem_type == REGRESSION:
            return "mse", False
        return self.main_metric, self.greater_is_better

    def metric_names(self, config):
        return ("loss", *PROBLEMS[config.task_options.problem_type].metric_names)

    def prepare_state(self, config, split, columns):
        opts = config.task_options
        problem = PROBLEMS[opts.problem_type]
        check_split_text(split, _text_options(columns))
        check_split_filled(split, _required_columns(columns, problem))
        state = ClassifyState(columns=columns, problem_type=problem.name,
                              labels=problem.prepare(config, split, columns["label"]))
        if opts.class_weights:
            weights = resolve_class_weights(opts.class_weights, state.labels,
                                            problem.references(config, state, split.train))
            state = dataclasses.replace(state, class_weights=weights)
        return state

    def check_rows(self, config, state, rows, where):
        super().check_rows(config, state, rows, where)
        problem = problem_of(state)
        check_text_columns(rows, _text_options(state.columns), where)
        check_no_missing(rows, _required_columns(state.columns, problem), where)
        problem.check_rows(config, state, rows, where)

    # ---- model ------------------------------------------------------------------------------------
    def base_model_kwargs(self, state):
        return problem_of(state).model_kwargs(state)

    def trainer_class(self):
        from ftune.tasks.classify.trainer import ClassifyTrainer

        return ClassifyTrainer

    def trainer_kwargs(self, config, state):
        weights = state.class_weights
        return {"class_weights": [weights[name] for name in state.labels]} if weights else {}

    # ---- features ---------------------------------------------------------------------------------
    def features(self, config, tokenizer, rows, state, *, purpose):
        columns, max_length = state.columns, config.max_length
        problem = problem_of(state)
        labelled = purpose != "predict" and columns["label"] in rows.column_names
        targets = problem.model_labels(state, problem.references(config, state, rows)) if labelled else None

        def encode(batch):
            pair = batch[columns["text_pair"]] if columns["text_pair"] else None
            return tokenizer(batch[columns["text"]], pair, truncation=True, max_length=max_length)

        features = tokenize_rows(rows, encode, config, desc="tokenizing")
        # Added afterwards, not returned by `encode`: map would cast a new "labels" to the type of a source column
        # of that name (a list of ClassLabel ids would turn multi-label float targets into ints).
        return with_column(features, "labels", targets) if targets is not None else features

    # ---- scoring ----------------------------------------------------------------------------------
    def decode(self, config, tokenizer, state, rows, features, predictions):
        return problem_of(state).decode(config, state, predictions)

    def references(self, config, state, rows):
        return problem_of(state).references(config, state, rows)

    def metric_module_for(self, state):
        return problem_of(state).metric_module

    def metrics(self, config, state, outputs, references, features):
        return problem_of(state).scores(state, outputs, references)

    # ---- inference --------------------------------------------------------------------------------
    def inputs_from_options(self, config, state, options):
        texts, pairs = options.get("texts") or [], options.get("text_pairs") or []
        columns = state.columns
        if not texts:
            raise UsageError("nothing to predict: pass --text (repeatable) or --input FILE")
        if pairs and len(pairs) != len(texts):
            raise UsageError(f"{len(texts)} --text but {len(pairs)} --text-pair; give one --text-pair per --text")
        if columns["text_pair"] and not pairs:
            raise UsageError(f"this run classifies text pairs ('{columns['text']}', '{columns['text_pair']}'); "
                             "pass --text-pair for each --text")
        rows = [{columns["text"]: t} for t in texts]
        for row, pair in zip(rows, pairs):
            row[columns["text_pair"] or "text_pair"] = pair
        return rows

    def check_inputs(self, config, state, inputs, names):
        columns = state.columns
        needed = [c for c in (columns["text"], columns["text_pair"]) if c]
        missing = [c for c in needed if c not in inputs[0]]
        if missing:
            raise UsageError(f"the input has no column {', '.join(repr(c) for c in missing)}; this run reads "
                             f"{', '.join(needed)} (the input has: {', '.join(inputs[0])})")
        for row, name in zip(inputs, names):
            for column in needed:
                if not isinstance(row.get(column), str) or not row[column].strip():
                    raise UsageError(f"{name} has no text in column '{column}'; give every row a text to classify")

    def prediction_fields(self, output):
        prediction = output["prediction"]
        if isinstance(prediction, list):                    # multi-label: the label set and every label's score
            return {"labels": prediction, "scores": output["scores"]}
        if isinstance(prediction, float):                   # regression: the predicted number
            return {"value": prediction}
        return {"label": prediction, "score": output["score"]}

    # ---- pictures and the model card ---------------------------------------------------------------
    def pictures(self, config, state, evaluation):
        return problem_of(state).pictures(state, evaluation)

    def model_card_facts(self, config, state):
        problem = problem_of(state)
        facts = [labels_fact(state.labels)] if state.labels else []
        if problem.name == MULTI_LABEL:
            facts.append(f"**Problem type:** multi-label (a sigmoid per label; predicted from probability "
                         f"{config.task_options.threshold:g})")
        elif problem.name == REGRESSION:
            facts.append(f"**Problem type:** regression of column `{state.columns['label']}` (mean squared "
                         "error)")
        weights = state.class_weights
        if weights:
            shown = ", ".join(f"{name} {weight:.4g}" for name, weight in weights.items())
            facts.append(f"**Class weights** (`{config.task_options.class_weights}`, in the cross-entropy loss): "
                         f"{shown}")
        return facts

    def model_card_usage(self, config, state, run_path):
        problem = problem_of(state)
        if not config.lora:
            call = {MULTI_LABEL: ", top_k=None", REGRESSION: ", function_to_apply=\"none\""}.get(problem.name, "")
            return (f"from transformers import pipeline\n\nclassifier = pipeline(\"text-classification\", "
                    f"model=\"{run_path}\"{call})\nclassifier(\"some text\")")
        kwargs = problem.model_kwargs(state)
        labels = [kwargs["id2label"][i] for i in range(kwargs["num_labels"])]
        problem_type = f", problem_type=\"{kwargs['problem_type']}\"" if "problem_type" in kwargs else ""
        return peft_labels_usage(self.peft_model_class, run_path, labels, problem_type)


def _text_options(columns) -> dict[str, str]:
    """The text columns and the options that choose them."""
    options = {"text": "--text-column", "text_pair": "--text-pair-column"}
    return {columns[role]: flag for role, flag in options.items() if columns[role]}


def _required_columns(columns, problem) -> list[str]:
    """The columns every row must fill: the texts, and the label unless a row may have none (multi-label)."""
    return [c for role, c in columns.items() if c and (role != "label" or problem.labels_required)]


TASK = ClassifyTask()
