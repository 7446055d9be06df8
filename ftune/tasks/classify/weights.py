"""Class weights for imbalanced single-label data (`--class-weights`): reading the option, resolving it to one
weight per label from the training rows.

`balanced` gives each class n_rows / (n_classes x its row count), so every class carries the same total weight
in the loss; `label=weight,...` sets weights by hand (labels not named keep weight 1). The resolved weights are
recorded in the run's state and scale each row's cross-entropy by the weight of its reference class.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Union

from ftune.errors import UsageError

BALANCED = "balanced"
EXAMPLE = "e.g. --class-weights balanced or --class-weights negative=2,positive=0.5"


def parse_weight_spec(spec: str) -> Union[str, dict[str, float]]:
    """`balanced`, or the {label: weight} of `label=weight,...`; ValueError says what is malformed."""
    text = spec.strip()
    if text.lower() == BALANCED:
        return BALANCED
    weights: dict[str, float] = {}
    for item in text.split(","):
        label, sep, number = item.strip().rpartition("=")
        label = label.strip()
        if not sep or not label:
            raise ValueError(f"expected 'balanced' or label=weight pairs separated by commas, got {spec!r} ({EXAMPLE})")
        try:
            weight = float(number)
        except ValueError:
            raise ValueError(f"the weight of '{label}' is not a number: {number.strip()!r} ({EXAMPLE})") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"the weight of '{label}' must be a positive number, got {number.strip()} ({EXAMPLE})")
        if label in weights:
            raise ValueError(f"label '{label}' is weighted twice ({EXAMPLE})")
        weights[label] = weight
    return weights


def resolve_class_weights(spec: str, labels: list[str], train_labels: list[str]) -> dict[str, float]:
    """One weight per label (in label order) for `spec`, from the labels of the training rows."""
    parsed = parse_weight_spec(spec)
    if parsed == BALANCED:
        return balanced_weights(labels, train_labels)
    unknown = [name for name in parsed if name not in labels]
    if unknown:
        raise UsageError(f"--class-weights names {', '.join(repr(u) for u in unknown)}, which the training rows do not "
                         f"have as a label; the labels are: {', '.join(labels[:30])}")
    return {name: parsed.get(name, 1.0) for name in labels}


def balanced_weights(labels: list[str], train_labels: list[str]) -> dict[str, float]:
    """n_rows / (n_classes x count) per class; a class with no training rows never is a target: weight 1."""
    counts = Counter(train_labels)
    present = [name for name in labels if counts[name]]
    total = sum(counts[name] for name in present)
    return {name: total / (len(present) * counts[name]) if counts[name] else 1.0 for name in labels}
