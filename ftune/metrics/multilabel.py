"""Multi-label classification metric for `evaluate`: macro and micro F1, subset accuracy, macro precision and
recall, and per-label figures. Scores are fractions in [0, 1].

Each row holds a 0/1 indicator per label (1: the label applies). A label's precision, recall and F1 count its
own decisions over all rows. Macro averages are taken over the labels that occur in the references or the
predictions (as for single-label classification); a label with no predicted (or no reference) rows scores 0
precision (or recall). Micro F1 pools every label decision: 2 TP / (2 TP + FP + FN). Subset accuracy is the
fraction of rows whose predicted label set equals the reference set exactly.

    metric = evaluate.load("path/to/ftune/metrics/multilabel.py")
    metric.compute(predictions=[[1, 0, 1], [0, 1, 0]], references=[[1, 0, 0], [0, 1, 0]])
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Macro and micro F1, subset accuracy, macro precision and recall, per-label figures."
_KWARGS = """
Args:
    predictions: per row, a 0/1 indicator for each label (the predicted set).
    references: per row, a 0/1 indicator for each label (the reference set).
Returns:
    f1 (macro), f1_micro, accuracy (subset accuracy), precision, recall (macro),
    per_label {index: {precision, recall, f1, support}}.
"""


class Multilabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int8")),
                                        "references": datasets.Sequence(datasets.Value("int8"))}),
        )

    def _compute(self, predictions, references):
        return multilabel_scores(predictions, references)


def _ratio(numerator, denominator):
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def multilabel_scores(predictions, references):
    preds = np.asarray(predictions, dtype=bool)
    refs = np.asarray(references, dtype=bool)
    true_pos = (preds & refs).sum(axis=0)
    false_pos = (preds & ~refs).sum(axis=0)
    false_neg = (~preds & refs).sum(axis=0)
    precision = _ratio(true_pos, true_pos + false_pos)
    recall = _ratio(true_pos, true_pos + false_neg)
    f1 = _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg)
    support = true_pos + false_neg
    present = (true_pos + false_pos + false_neg) > 0

    def macro(values) -> float:
        return float(values[present].mean()) if present.any() else 0.0

    pooled = 2 * true_pos.sum() + false_pos.sum() + false_neg.sum()
    return {
        "f1": macro(f1),
        "f1_micro": float(2 * true_pos.sum() / pooled) if pooled else 0.0,
        "accuracy": float((preds == refs).all(axis=1).mean()) if len(refs) else 0.0,
        "precision": macro(precision),
        "recall": macro(recall),
        "per_label": {i: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i in range(len(support))},
    }
