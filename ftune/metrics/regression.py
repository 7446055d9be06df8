"""Regression metric for `evaluate`: mean squared error, mean absolute error, and the Pearson and Spearman
correlations of predictions with references.

MSE and MAE are in the squared and plain units of the target. Spearman's correlation is Pearson's on the
ranks, tied values sharing the mean of the ranks they span (as scipy.stats.spearmanr does). A correlation is
undefined when either side is constant or there are fewer than two rows: it is then None, never a made-up 0.

    metric = evaluate.load("path/to/ftune/metrics/regression.py")
    metric.compute(predictions=[1.0, 2.5, 2.0], references=[1.0, 3.0, 2.0])
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean squared and absolute error; Pearson and Spearman correlation (ties: average ranks)."
_KWARGS = """
Args:
    predictions: predicted numbers.
    references: true numbers.
Returns:
    mse, mae, pearson, spearman (None when undefined: a constant side, or fewer than two rows).
"""


class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        return regression_scores(predictions, references)


def regression_scores(predictions, references):
    preds = np.asarray(predictions, dtype=np.float64)
    refs = np.asarray(references, dtype=np.float64)
    errors = preds - refs
    return {
        "mse": float(np.mean(errors ** 2)) if len(refs) else 0.0,
        "mae": float(np.mean(np.abs(errors))) if len(refs) else 0.0,
        "pearson": pearson(preds, refs),
        "spearman": pearson(average_ranks(preds), average_ranks(refs)),
    }


def pearson(x, y):
    """Pearson's r of two equally long arrays, or None when it is undefined."""
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    spread = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if spread == 0:
        return None
    return float(np.clip(np.sum(dx * dy) / spread, -1.0, 1.0))


def average_ranks(values):
    """1-based ranks; a run of equal values shares the mean of the ranks it spans."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered)) + 1])
    ends = np.concatenate([starts[1:], [len(values)]])
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks
