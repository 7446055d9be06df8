"""Write an offline preference data set for `ftune dpo`: aclsum's summary sentences, each asked about in a chat,
with the right role as the chosen answer and a wrong role as the rejected one.

aclsum (PyPI, MIT) summarises each of its ACL papers in three sentences: the challenge, the approach and the
outcome. Each row here is one such sentence: `prompt` is a user turn asking which of the three the sentence
states, `chosen` the assistant turn naming its role, `rejected` an assistant turn naming one of the two other
roles (drawn with --seed). The prompt and answers are chat messages, so the model's chat template is applied.
Training pairs come from aclsum's train papers, held-out pairs (`test.jsonl`) from its test papers: no paper is
both trained on and scored.

    python examples/prepare_aclsum_pairs.py data/aclsum-pairs                    # 120 train, 60 held-out pairs
    python examples/prepare_aclsum_pairs.py data/aclsum-pairs --train-papers 100 --test-papers 100
"""

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

ROLES = ("challenge", "approach", "outcome")
QUESTION = ("In a paper's three-sentence summary, each sentence states the challenge, the approach or the outcome. "
            "Which one does this sentence state?\n\n{sentence}\n\nAnswer with one word: challenge, approach or "
            "outcome.")


def preference_pairs(papers: list[dict], rng: random.Random) -> list[dict]:
    """One pair per summary sentence: its role chosen, another role rejected."""
    pairs = []
    for paper in papers:
        for role in ROLES:
            wrong = rng.choice([other for other in ROLES if other != role])
            pairs.append({
                "id": f"{paper['id']}-{role}",
                "prompt": [{"role": "user", "content": QUESTION.format(sentence=paper["summary"][role])}],
                "chosen": [{"role": "assistant", "content": role}],
                "rejected": [{"role": "assistant", "content": wrong}],
            })
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", default="data/aclsum-pairs", help="the folder to write")
    parser.add_argument("--train-papers", type=int, default=40, help="aclsum train papers to use (of 100)")
    parser.add_argument("--test-papers", type=int, default=20, help="aclsum test papers to hold out (of 100)")
    parser.add_argument("--seed", type=int, default=0, help="draws the rejected role of each pair")
    args = parser.parse_args()
    # Read the package's files without importing it: its module pulls in dependencies not needed here.
    spec = importlib.util.find_spec("aclsum")
    if spec is None:
        sys.exit("error: the aclsum package is not installed; run: pip install --no-deps aclsum")
    source = Path(next(iter(spec.submodule_search_locations))) / "dataset"
    out = Path(args.target)
    existing = [str(out / f"{split}.jsonl") for split in ("train", "test") if (out / f"{split}.jsonl").exists()]
    if existing:  # checked before anything is written: a file the user has is never replaced
        sys.exit(f"error: {', '.join(existing)} already exist(s); give another folder or remove them")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for split, name, count in (("train", "train", args.train_papers), ("test", "test", args.test_papers)):
        papers = [json.loads(line) for line in (source / f"{name}.jsonl").read_text().splitlines()][:count]
        pairs = preference_pairs(papers, rng)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
        print(f"{out / (split + '.jsonl')}: {len(pairs)} pairs from {len(papers)} papers")


if __name__ == "__main__":
    main()
