"""Write the quickstart data set: aclsum's summary sentences, each labelled with its role.

aclsum (PyPI, MIT) holds 250 ACL papers, each summarised by three sentences: the challenge, the approach
and the outcome. Telling which role a sentence plays is a real 3-class task. The paper splits are kept
(train 100 papers, validation 50, test 100), so no paper is both trained on and held out.

    python examples/prepare_aclsum.py data/aclsum-roles
"""

import importlib.util
import json
import sys
from pathlib import Path

ROLES = ("challenge", "approach", "outcome")
SPLITS = {"train": "train", "validation": "val", "test": "test"}


def main(target: str) -> None:
    # Read the package's files without importing it: its module pulls in dependencies not needed here.
    spec = importlib.util.find_spec("aclsum")
    if spec is None:
        sys.exit("error: the aclsum package is not installed; run: pip install --no-deps aclsum")
    source = Path(next(iter(spec.submodule_search_locations))) / "dataset"
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        rows = []
        for line in (source / f"{name}.jsonl").read_text().splitlines():
            paper = json.loads(line)
            for role in ROLES:
                rows.append({"id": f"{paper['id']}-{role}", "text": paper["summary"][role], "label": role})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / (split + '.jsonl')}: {len(rows)} rows")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/aclsum-roles")
