"""The three problem types of `ftune classify`: what a row's target is, what the model's loss reads, how logits
become one prediction per row, and how predictions are scored.

- single-label: one class per row; the prediction is the class with the highest softmax probability
  (cross-entropy loss, optionally class-weighted).
- multi-label: a set of classes per row, a JSON list or a delimited string (an empty list or blank cell: no
  label); one sigmoid per class, the prediction is every class whose probability reaches --threshold
  (binary cross-entropy, transformers' `multi_label_classification`).
- regression: one number per row; the prediction is the model's single output (mean squared error,
  transformers' `regression`).

Each prediction is decoded from its own row's logits alone, so it does not depend on the batch it was scored in.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from ftune import console
from ftune.data import column_list, describe_rows, row_ids
from ftune.errors import UsageError
from ftune.tasks.base import Scores, first_array, softmax
from ftune.tasks.labels import (
    check_known,
    class_names,
    distinct_set_values,
    distinct_values,
    feature_names,
    label_config,
    merged_names,
    resolve_variants,
    row_label_sets,
    row_labels,
    variant_key,
)
from ftune.tasks.state import TaskState, saved_when_set

SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single-label", "multi-label", "regression"


@dataclass(frozen=True, kw_only=True)
class ClassifyState(TaskState):
    """What a classify run derives: its columns (text, text_pair, label), its problem type, its classes."""

    problem_type: str = SINGLE_LABEL            # runs made before problem types existed are single-label
    labels: Optional[list[str]] = saved_when_set()              # class names in id order (none for regression)
    class_weights: Optional[dict[str, float]] = saved_when_set()  # each class's weight in the loss (--class-weights)


class Problem:
    """What differs between the problem types; the task (ftune.tasks.classify) does the rest."""

    name: str
    labels_required: bool = True    # every row must have a value in the label column
    metric_names: tuple[str, ...] = ()  # what `scores` reports (without "eval_")
    metric_module: str                  # the ftune.metrics module `scores` computes them with

    def stratify_by(self, config, column: str):
        """A function giving each row's stratum for the held-out carve, or None for a plain random carve."""
        return None

    def prepare(self, config, split, column: str) -> Optional[list[str]]:
        """Check the label column of the training and held-out rows; the class names in id order (None: no
        classes)."""
        raise NotImplementedError

    def check_rows(self, config, state, rows, where: str) -> None:
        """Raise UsageError if the targets of rows given to `ftune eval --data` cannot be scored."""
        raise NotImplementedError

    def references(self, config, state, rows) -> list[Any]:
        """Each row's target as eval_predictions.jsonl shows it."""
        raise NotImplementedError

    def model_labels(self, state, references: list[Any]) -> list[Any]:
        """The `labels` feature the model's loss reads, from the references."""
        raise NotImplementedError

    def model_kwargs(self, state) -> dict[str, Any]:
        """from_pretrained arguments: head size, label names, transformers' problem type."""
        raise NotImplementedError

    def decode(self, config, state, predictions) -> list[dict[str, Any]]:
        """One output per row, from that row's logits alone: {"prediction": ..., extras}."""
        raise NotImplementedError

    def scores(self, state, outputs: list[dict[str, Any]], references: list[Any]) -> Scores:
        """The metrics (without "eval_"), details and on-screen table of the outputs against the references."""
        raise NotImplementedError

    def pictures(self, state, evaluation) -> list:
        """Pictures of an evaluation (ftune.pictures), drawn into the run and by `ftune eval`."""
        return []


def merging(config) -> bool:
    """Whether the run merges labels that differ only by case or surrounding spaces (--merge-label-variants)."""
    return bool(getattr(config.task_options, "merge_label_variants", False))


def split_variants(config, split, column: str, rows_of) -> dict[str, str]:
    """ftune.tasks.labels.resolve_variants over the training and held-out rows; `rows_of(ds)` gives the label
    names of each row of `ds` as a list."""
    return resolve_variants([(rows_of(split.train), split.train_names, "the training split"),
                             (rows_of(split.eval), split.eval_names, "the held-out split")], column,
                            merge=merging(config))


def renamed_values(values: list, renamed: dict[str, str]) -> list:
    """Distinct label values with merged variants renamed (numbers stay numbers, for sorting)."""
    return [renamed.get(v, v) if isinstance(v, str) else v for v in values]


def check_unseen(found, labels: list[str]) -> None:
    """Raise UsageError naming the held-out labels (`found`) that no training row has."""
    unseen = sorted(set(found) - set(labels))
    if unseen:
        raise UsageError(f"held-out labels never seen in training: {', '.join(unseen[:10])}; add training rows "
                         f"for them or drop those rows (training labels: {', '.join(labels[:20])})")


# ---- single-label ------------------------------------------------------------------------------------


class SingleLabel(Problem):
    name = SINGLE_LABEL
    metric_module = "classification"
    metric_names = ("accuracy", "f1", "precision", "recall")

    def stratify_by(self, config, column):
        if merging(config):
            return lambda ds: [variant_key(name) for name in row_labels(ds, column)]
        return lambda ds: row_labels(ds, column)

    def prepare(self, config, split, column):
        feature = split.train.features[column]
        if hasattr(feature, "feature"):
            raise UsageError(f"column '{column}' holds lists of labels; for several labels per row pass "
                             "--problem-type multi-label")
        values = distinct_values(split.train, column)
        if feature_names(feature) is None:  # a ClassLabel's names are the data's own classes, as they are
            renamed = split_variants(config, split, column, lambda ds: [[name] for name in row_labels(ds, column)])
            values = renamed_values(values, renamed)
        labels = class_names(values, feature, column=column)
        if len(labels) < 2:
            raise UsageError(f"the training rows have one class only ({labels[0]!r} in column '{column}'); "
                             "classification needs at least two")
        seen = ClassifyState(columns={"label": column}, problem_type=self.name, labels=labels)
        check_unseen(self.references(config, seen, split.eval), labels)
        fractional = [v for v in values if isinstance(v, float) and not float(v).is_integer()]
        if fractional:
            console.warn(f"column '{column}' holds fractional numbers ({fractional[0]}, ...), each taken as a class; "
                         "for a numeric target pass --problem-type regression")
        return labels

    def check_rows(self, config, state, rows, where):
        check_known(self.references(config, state, rows), state.labels, where)

    def references(self, config, state, rows):
        names = row_labels(rows, state.columns["label"])
        if merging(config):
            rename = merged_names(state.labels)
            return [rename(name) for name in names]
        return names

    def model_labels(self, state, references):
        index = {name: i for i, name in enumerate(state.labels)}
        return [index[name] for name in references]

    def model_kwargs(self, state):
        # ignore_mismatched_sizes: a checkpoint already tuned on other labels gets a new head.
        return {**label_config(state.labels), "ignore_mismatched_sizes": True}

    def decode(self, config, state, predictions):
        labels = state.labels
        probs = softmax(first_array(predictions))
        best = probs.argmax(-1)
        return [{"prediction": labels[k], "score": float(probs[i, k])} for i, k in enumerate(best.tolist())]

    def scores(self, state, outputs, references):
        from ftune.metrics import load_metric

        labels = state.labels
        index = {name: i for i, name in enumerate(labels)}
        scores = load_metric(self.metric_module).compute(
            predictions=[index[o["prediction"]] for o in outputs], references=[index[r] for r in references],
            num_labels=len(labels))
        per_class = {labels[i]: figures for i, figures in scores["per_class"].items()}
        matrix = scores["confusion_matrix"]
        details = {"per_class": per_class, "confusion_matrix": {"labels": labels, "matrix": matrix}}
        short = [str(n)[:12] for n in labels]
        table = "\n\n".join([
            figures_table(per_class, "class", "per class"),
            _table(["reference \\ predicted", *short], [[short[i], *row] for i, row in enumerate(matrix)],
                   "confusion matrix")])
        return Scores(metrics={k: v for k, v in scores.items() if isinstance(v, float)}, details=details, table=table)

    def pictures(self, state, evaluation):
        from ftune.pictures import confusion_matrix_picture

        found = evaluation.details.get("confusion_matrix")
        return [confusion_matrix_picture(found["labels"], found["matrix"])] if found else []


# ---- multi-label -------------------------------------------------------------------------------------


class MultiLabel(Problem):
    name = MULTI_LABEL
    metric_module = "multilabel"
    metric_names = ("f1", "f1_micro", "accuracy", "precision", "recall")
    labels_required = False     # a row may have no label at all

    def stratify_by(self, config, column):
        separator = config.task_options.label_separator

        def rarest_label(ds) -> list[str]:
            # Stratifying by each row's rarest label puts every label that is some rows' rarest (and has two or
            # more such rows) on both sides of the carve; exact label sets would mostly be groups of one.
            sets = row_label_sets(ds, column, separator)
            if merging(config):
                sets = [list(dict.fromkeys(variant_key(name) for name in names)) for names in sets]
            counts = Counter(name for names in sets for name in names)
            return [min(names, key=lambda n: (counts[n], n)) if names else "" for names in sets]

        return rarest_label

    def prepare(self, config, split, column):
        separator = config.task_options.label_separator
        feature = split.train.features[column]
        values = distinct_set_values(split.train, column, separator)
        if feature_names(feature) is None:
            values = renamed_values(values, split_variants(config, split, column,
                                                           lambda ds: row_label_sets(ds, column, separator)))
        labels = class_names(values, feature, column=column)
        if not labels:
            raise UsageError(f"no training row has a label in column '{column}'; give each row a JSON list of "
                             f"labels or '{separator}'-separated labels (--label-separator)")
        seen = ClassifyState(columns={"label": column}, problem_type=self.name, labels=labels)
        check_unseen([name for names in self._label_sets(config, seen, split.eval) for name in names], labels)
        return labels

    def check_rows(self, config, state, rows, where):
        sets = self._label_sets(config, state, rows)
        check_known([name for names in sets for name in names], state.labels, where)

    def references(self, config, state, rows):
        index = {name: i for i, name in enumerate(state.labels)}
        return [sorted(names, key=index.__getitem__) for names in self._label_sets(config, state, rows)]

    def _label_sets(self, config, state, rows) -> list[list[str]]:
        """Each row's label names, merged variants named as the run names them."""
        sets = row_label_sets(rows, state.columns["label"], config.task_options.label_separator)
        if merging(config):
            rename = merged_names(state.labels)
            sets = [list(dict.fromkeys(rename(name) for name in names)) for names in sets]
        return sets

    def model_labels(self, state, references):
        # Floats: binary cross-entropy reads the 0/1 targets as probabilities.
        return [indicators(names, state.labels, float) for names in references]

    def model_kwargs(self, state):
        return {**label_config(state.labels), "problem_type": "multi_label_classification",
                "ignore_mismatched_sizes": True}

    def decode(self, config, state, predictions):
        import numpy as np

        labels, threshold = state.labels, config.task_options.threshold
        logits = np.asarray(first_array(predictions), dtype=np.float64)
        probs = np.exp(-np.logaddexp(0.0, -logits))  # the sigmoid, without overflow for large |logits|
        return [{"prediction": [name for name, p in zip(labels, row) if p >= threshold],
                 "scores": {name: float(p) for name, p in zip(labels, row)}} for row in probs]

    def scores(self, state, outputs, references):
        from ftune.metrics import load_metric

        labels = state.labels
        scores = load_metric(self.metric_module).compute(
            predictions=[indicators(o["prediction"], labels, int) for o in outputs],
            references=[indicators(names, labels, int) for names in references])
        per_label = {labels[i]: figures for i, figures in scores["per_label"].items()}
        return Scores(metrics={k: v for k, v in scores.items() if isinstance(v, float)},
                      details={"per_label": per_label}, table=figures_table(per_label, "label", "per label"))

    def pictures(self, state, evaluation):
        from ftune.pictures import label_scores_picture

        per_label = evaluation.details.get("per_label") or {}
        return [label_scores_picture("label_f1.png", "F1 per label", {n: f["f1"] for n, f in per_label.items()}, "f1",
                                     support={n: f["support"] for n, f in per_label.items()})] if per_label else []


def indicators(names, labels: list[str], kind=int) -> list:
    """A 0/1 entry per label: whether it is among `names`."""
    chosen = set(names)
    return [kind(name in chosen) for name in labels]


# ---- regression --------------------------------------------------------------------------------------


class Regression(Problem):
    name = REGRESSION
    metric_module = "regression"
    metric_names = ("mse", "mae", "pearson", "spearman")

    def prepare(self, config, split, column):
        numeric_targets(split.train, column, "the training split", split.train_names)
        numeric_targets(split.eval, column, "the held-out split", split.eval_names)
        return None

    def check_rows(self, config, state, rows, where):
        numeric_targets(rows, state.columns["label"], where, row_ids(rows, range(len(rows))))

    def references(self, config, state, rows):
        return numeric_targets(rows, state.columns["label"], "the rows")

    def model_labels(self, state, references):
        return references

    def model_kwargs(self, state):
        column = state.columns["label"]
        return {"num_labels": 1, "id2label": {0: column}, "label2id": {column: 0}, "problem_type": "regression",
                "ignore_mismatched_sizes": True}

    def decode(self, config, state, predictions):
        import numpy as np

        values = np.asarray(first_array(predictions), dtype=np.float64).reshape(-1)
        return [{"prediction": float(v)} for v in values]

    def scores(self, state, outputs, references):
        from ftune.metrics import load_metric

        scores = load_metric(self.metric_module).compute(predictions=[o["prediction"] for o in outputs],
                                                   references=references)
        return Scores(metrics=dict(scores))

    def pictures(self, state, evaluation):
        from ftune.pictures import predicted_vs_true_picture

        rows = evaluation.predictions
        return [predicted_vs_true_picture("predicted_vs_true.png", "Predicted against true values",
                                          [r["reference"] for r in rows], [r["prediction"] for r in rows],
                                          state.columns["label"])] if rows else []


def numeric_targets(rows, column: str, where: str, ids: Optional[list] = None) -> list[float]:
    """Each row's target as a float (numbers, or text that spells one); UsageError naming the first row that has
    none. Rows are named by `ids` (the data's ids or row numbers), else by their position."""
    targets = []
    for i, value in enumerate(column_list(rows, column)):
        number = _finite_number(value)
        if number is None:
            raise UsageError(f"{describe_rows([i], ids)} of {where} has a non-numeric target {value!r} in column "
                             f"'{column}'; "
                             "regression needs a finite number in every row (fix the row, or pick another "
                             "--problem-type)")
        targets.append(number)
    return targets


def _finite_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


PROBLEMS = {p.name: p for p in (SingleLabel(), MultiLabel(), Regression())}


# ---- tables ------------------------------------------------------------------------------------------


def figures_table(figures: dict[str, dict], first: str, title: str) -> str:
    """Precision, recall, F1 and support per class (or label), as a table."""
    rows = [(name, f"{f['precision']:.4f}", f"{f['recall']:.4f}", f"{f['f1']:.4f}", f["support"])
            for name, f in figures.items()]
    return _table([first, "precision", "recall", "f1", "support"], rows, title)


def _table(header, rows, title: str) -> str:
    from ftune.console import table

    return table(header, rows, title=title)
