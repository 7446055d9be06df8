"""Classification metric for `evaluate`: accuracy and macro precision / recall / F1, per-class figures and a
confusion matrix. Scores are fractions in [0, 1].

Macro averages are taken over the classes that occur in the references or the predictions (as
scikit-learn does); a class with no predicted (or no reference) rows scores 0 precision (or recall).

    metric = evaluate.load("path/to/ftune/metrics/classification.py")
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy and macro-averaged precision, recall and F1, with per-class figures and a confusion matrix."
_KWARGS = """
Args:
    predictions: predicted class ids.
    references: true class ids.
    num_labels: number of classes (default: 1 + the largest id seen); sizes the confusion matrix.
Returns:
    accuracy, f1, precision, recall (macro), per_class {id: {precision, recall, f1, support}},
    confusion_matrix (rows: reference, columns: prediction).
"""


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        return classification_scores(predictions, references, num_labels)


def classification_scores(predictions, references, num_labels=None):
    preds = np.asarray(predictions, dtype=np.int64)
    refs = np.asarray(references, dtype=np.int64)
    if num_labels is None:
        num_labels = int(max(preds.max(initial=0), refs.max(initial=0))) + 1
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (refs, preds), 1)
    true_pos = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    present = (predicted > 0) | (support > 0)
    return {
        "accuracy": float(true_pos.sum() / max(len(refs), 1)),
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": {int(i): {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                               "support": int(support[i])} for i in range(num_labels)},
        "confusion_matrix": matrix.tolist(),
    }
