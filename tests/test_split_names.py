"""One rule names the split a data file holds (ftune.data's `split_of`), for every layout read from a folder of files:
ftune.data's own, and the tasks' CoNLL, SQuAD JSON and TSV-pair files."""

from __future__ import annotations

import json
from pathlib import Path


def test_a_files_name_says_its_split():
    from ftune.data import split_of

    names = {"train": "train", "Training-00000-of-00002": "train", "dev": "validation", "valid.part1": "validation",
             "val": "validation", "test-00001": "test", "holdout": "holdout"}
    assert {stem: split_of(Path(f"{stem}.jsonl")) for stem in names} == names


def test_every_layout_groups_a_folders_files_by_that_rule(tmp_path):
    from ftune.data import load_source
    from ftune.tasks.ner.data import load_conll
    from ftune.tasks.qa.data import load_nested_squad
    from ftune.tasks.translate.data import load_tsv_pairs

    squad = {"data": [{"title": "t", "paragraphs": [{"context": "the cat", "qas": [
        {"id": "q", "question": "who?", "answers": [{"text": "cat", "answer_start": 4}]}]}]}]}
    layouts = {
        "rows": (".jsonl", json.dumps({"text": "the cat", "label": "a"}) + "\n", load_source),
        "conll": (".conll", "the O\ncat B-ANIMAL\n\n", load_conll),
        "squad": (".json", json.dumps(squad), load_nested_squad),
        "pairs": (".tsv", "the cat\tle chat\n", lambda folder: load_tsv_pairs(folder, set())),
    }
    for name, (suffix, text, load) in layouts.items():
        folder = tmp_path / name
        folder.mkdir()
        for stem in ("train-00000-of-00002", "train-00001-of-00002", "dev"):
            (folder / f"{stem}{suffix}").write_text(text)
        loaded = load(str(folder))
        assert {split: len(rows) for split, rows in loaded.items()} == {"train": 2, "validation": 1}, name
