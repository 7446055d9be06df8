"""Compare a classify run's held-out metrics with the trivial baseline: always predict the majority class.

    python examples/baseline.py runs/quickstart
"""

import json
import sys
from collections import Counter
from pathlib import Path


def macro_f1(predictions: list[str], references: list[str]) -> float:
    labels = sorted(set(predictions) | set(references))
    scores = []
    for label in labels:
        tp = sum(p == r == label for p, r in zip(predictions, references))
        predicted, actual = predictions.count(label), references.count(label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def main(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "eval_predictions.jsonl").read_text().splitlines()]
    references = [r["reference"] for r in rows]
    predictions = [r["prediction"] for r in rows]
    majority = Counter(references).most_common(1)[0][0]
    trivial = [majority] * len(references)
    print(f"{'held-out rows':<28}{len(rows)}")
    print(f"{'':<28}{'accuracy':>10}{'macro F1':>10}")
    for name, preds in ((f"majority class ({majority})", trivial), ("ftune run", predictions)):
        accuracy = sum(p == r for p, r in zip(preds, references)) / len(references)
        print(f"{name:<28}{accuracy:>10.4f}{macro_f1(preds, references):>10.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart"))
