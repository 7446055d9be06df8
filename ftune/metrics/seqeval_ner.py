"""Named-entity metric for `evaluate`: entity-level precision, recall and F1 from `seqeval`, and word-level
accuracy. Scores are fractions in [0, 1].

Entities are found by seqeval in its default mode (as the CoNLL `conlleval` script: no scheme enforced; an
I- tag after O, or after another type, starts an entity), which reads IOB1, IOB2 (BIO), IO, IOE and BIOES
(IOBES) tags alike. A bare tag without a prefix ("PER") is read as I-PER first, so IO data written without
prefixes still makes entities. An entity counts as found only when its type and its exact words match.
precision, recall and f1 are micro averages over all entities (seqeval's `average="micro"`); accuracy is the
share of words whose tag is right. Per type: precision, recall, f1 and support (reference entities).
A set with no entities on either side scores 0 (seqeval's zero_division=0).

    metric = evaluate.load("path/to/ftune/metrics/seqeval_ner.py")
    metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])
"""

import datasets
import evaluate

_DESCRIPTION = "Entity-level precision/recall/F1 (seqeval, default mode, micro average) and word accuracy."
_KWARGS = """
Args:
    predictions: per sentence, the predicted tag of each word.
    references: per sentence, the reference tag of each word (as many as predicted).
Returns:
    precision, recall, f1 (entity level, micro average), accuracy (word level), all 0-1;
    per_type {entity type: {precision, recall, f1, support}}.
"""

PREFIXES = ("B", "I", "E", "S")


class SeqevalNer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        return entity_scores(predictions, references)


def prefixed(tag: str) -> str:
    """The tag as seqeval reads it: O, a prefixed tag as it is, a bare type as a continuation (I-type)."""
    if tag == "O":
        return tag
    prefix, sep, kind = tag.partition("-")
    return tag if sep and prefix in PREFIXES and kind else f"I-{tag}"


def entity_scores(predictions, references):
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support

    predicted = [[prefixed(t) for t in tags] for tags in predictions]
    reference = [[prefixed(t) for t in tags] for tags in references]
    for i, (p, r) in enumerate(zip(predicted, reference)):
        if len(p) != len(r):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(r)} reference tags")
    types = sorted({kind for tags in (predicted, reference) for kind, _, _ in get_entities(tags)})
    per_type = {}
    if types:
        precision, recall, f1, support = precision_recall_fscore_support(reference, predicted, average=None,
                                                                         zero_division=0)
        per_type = {kind: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                           "support": int(support[k])} for k, kind in enumerate(types)}
    words = sum(len(tags) for tags in reference)
    return {
        "precision": float(precision_score(reference, predicted, zero_division=0)),
        "recall": float(recall_score(reference, predicted, zero_division=0)),
        "f1": float(f1_score(reference, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(reference, predicted)) if words else 0.0,
        "per_type": per_type,
    }
