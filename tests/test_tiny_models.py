"""The tiny test models are the same files in every build, process and session: a token's id picks its embedding
row, so a vocabulary that moved between sessions moved every figure a test trains (tests/tiny_models.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tiny_models
from tests.conftest import ROOT
from tests.test_translate import build_tiny_nllb

BUILDERS = {"bert": tiny_models.build_bert, "gpt2": tiny_models.build_gpt2, "bart": tiny_models.build_bart,
            "t5": tiny_models.build_t5, "nllb": build_tiny_nllb}

# Builds every tiny model under argv[1] and prints each file's digest, in a process of its own.
BUILD_ALL = """
import json, sys
from pathlib import Path
from tests.test_tiny_models import BUILDERS, digests
print(json.dumps({name: digests(build(Path(sys.argv[1]) / name)) for name, build in BUILDERS.items()}))
"""


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict[str, str]]:
    folder = tmp_path_factory.mktemp("first")
    return {name: digests(build(folder / name)) for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", BUILDERS)
def test_a_second_build_in_the_same_process_is_identical(built, name, tmp_path):
    again = digests(BUILDERS[name](tmp_path / name))
    assert "tokenizer_config.json" in again and "model.safetensors" in again
    assert again == built[name]


def test_a_build_in_another_process_is_identical(built, tmp_path):
    # Another hash seed, and the tokenizers library's thread pool on: what differs between sessions and machines.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "TOKENIZERS_PARALLELISM": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", BUILD_ALL, str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == built


def test_wordpiece_keeps_the_corpus_words_whole(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert all(tokenizer.tokenize(word) == [word] for word in tiny_models.WORDS)
    unseen = tokenizer.tokenize("catdogs")  # a word outside the corpus: pieces, not [UNK]
    assert len(unseen) > 1 and "[UNK]" not in unseen and tokenizer.convert_tokens_to_string(unseen) == "catdogs"
