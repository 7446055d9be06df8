"""ROUGE metric for `evaluate`: rouge1, rouge2, rougeL and rougeLsum, each the mean over examples of the
`rouge-score` package's per-example F-measure, x 100.

Deterministic: a plain mean, no bootstrap aggregation. Words are stemmed (Porter). rougeLsum reads
sentences split at newlines (nltk's punkt is not needed): put one sentence per line to get the
summary-level LCS. rouge-score's tokenizer keeps only a-z and 0-9, so text in other scripts scores 0.

    metric = evaluate.load("path/to/ftune/metrics/rouge.py")
    metric.compute(predictions=["the cat sat"], references=["the cat sat down"])
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_DESCRIPTION = "Mean per-example ROUGE F-measure (rouge-score, stemmed; rougeLsum over newline-split sentences), x 100."
_KWARGS = """
Args:
    predictions: generated summaries (strings).
    references: reference summaries (strings), one per prediction.
    per_example: also return the per-example F-measures (default False).
Returns:
    rouge1, rouge2, rougeL, rougeLsum: means over the examples, 0-100; with per_example, also
    per_example {rouge type: [F-measure x 100 per example]}.
"""


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, per_example=False):
        return rouge_scores(predictions, references, per_example=per_example)


def rouge_scores(predictions, references, per_example=False):
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    figures = {name: [] for name in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        for name in ROUGE_TYPES:
            figures[name].append(100 * scores[name].fmeasure)
    count = max(len(predictions), 1)
    result = {name: sum(values) / count for name, values in figures.items()}
    if per_example:
        result["per_example"] = figures
    return result
