"""SQuAD metric for `evaluate`: exact match and F1 (0-100) as the official SQuAD v1.1 and v2.0 scripts score
them, with v2's HasAns / NoAns breakdowns. A prediction of "" means "no answer".

Answers are compared after the official normalisation: lower case, punctuation removed, the articles
a/an/the removed, white space collapsed. Each prediction scores the best it reaches against any of its
gold answers. With `version_2=True` an example whose gold answers are all empty (or normalise to nothing)
is unanswerable: only "" is right for it.

    metric = evaluate.load("path/to/ftune/metrics/squad.py")
    metric.compute(predictions=["the cat", ""], references=[["Cat", "a dog"], []], version_2=True)
"""

import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = "Exact match and token F1 of extracted answers, with the official SQuAD normalisation."
_KWARGS = """
Args:
    predictions: predicted answer texts ("" = no answer).
    references: for each prediction, the list of gold answer texts ([] = unanswerable).
    version_2: score as the SQuAD v2.0 script (unanswerable questions, HasAns/NoAns breakdowns).
Returns:
    exact_match, f1 (0-100); with version_2 also HasAns_exact, HasAns_f1, HasAns_total and NoAns_exact,
    NoAns_f1, NoAns_total for the kinds of question present.
"""

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, version_2=False):
        return squad_scores(predictions, references, version_2=version_2)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_score(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, *, empty_matches: bool) -> float:
    """Token F1 after normalisation. v2 counts an empty prediction against an empty gold as a match;
    v1 scores any pair without a common token as 0."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if empty_matches and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions, references, version_2=False):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    exact, f1, answerable = [], [], []
    for prediction, golds in zip(predictions, references):
        golds = list(golds or [])
        if version_2:
            # As the v2 script: gold answers that normalise to nothing are dropped; none left = unanswerable.
            golds = [g for g in golds if normalize_answer(g)] or [""]
        elif not golds:
            golds = [""]
        answerable.append(any(normalize_answer(g) for g in golds))
        exact.append(max(exact_score(prediction, g) for g in golds))
        f1.append(max(f1_score(prediction, g, empty_matches=version_2) for g in golds))
    scores = {"exact_match": _percent(exact), "f1": _percent(f1)}
    if version_2:
        for name, wanted in (("HasAns", True), ("NoAns", False)):
            chosen = [i for i, has in enumerate(answerable) if has == wanted]
            if chosen:  # as the v2 script: a breakdown only for the kinds of question present
                scores[f"{name}_exact"] = _percent([exact[i] for i in chosen])
                scores[f"{name}_f1"] = _percent([f1[i] for i in chosen])
                scores[f"{name}_total"] = len(chosen)
    return scores


def _percent(values) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0
