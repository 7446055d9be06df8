"""The data layouts of `ftune ner` and the words and tags of each sentence.

Three layouts:
- CoNLL files (`.conll`, `.txt`, `.tsv`): one token per line, its tag in the LAST white-space separated column,
  a blank line between sentences, `-DOCSTART-` lines skipped. A folder of `train`/`dev`/`test` files gives the
  splits (each file's split named by ftune.data's `split_of`). These are read here: ftune.data would read `.txt`
  as plain text and `.tsv` as a table.
- The Hub layout: a list of tokens and a list of ClassLabel ids per row (e.g. conll2003's tokens/ner_tags).
- JSONL/CSV rows with a tokens list and a tags list (in CSV a JSON list or white-space separated words).
Tags are named: ClassLabel ids become their names, numbers their text (as ftune.tasks.labels names them).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Optional

from ftune.data import check_no_missing, check_text_columns, column_list, describe_rows, files_by_split, quoted
from ftune.errors import UsageError
from ftune.tasks.labels import feature_names, label_name

CONLL_SUFFIXES = (".conll", ".txt", ".tsv")
DOCSTART = "-DOCSTART-"
# A word of free text: letters/digits (with inner hyphens or apostrophes, as in "Jean-Luc", "O'Neil"), or one
# punctuation mark — how CoNLL data is tokenized, so `--text` meets the model with words like those it learned.
WORD = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


# ---- CoNLL files ----------------------------------------------------------------------------------


def load_conll(data: Optional[str]):
    """A DatasetDict (columns tokens, tags) from a CoNLL file or a folder of them; None for other data."""
    if not data:
        return None
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() not in CONLL_SUFFIXES:
            return None
        groups = {"train": [path]}
    elif path.is_dir() and not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        conll = [f for f in files if f.suffix.lower() in CONLL_SUFFIXES]
        if not conll or len(conll) != len([f for f in files if f.suffix.lower() in
                                           (*CONLL_SUFFIXES, ".csv", ".json", ".jsonl", ".parquet")]):
            return None
        groups = files_by_split(conll)
    else:
        return None
    from ftune.data import quiet_datasets

    datasets = quiet_datasets()

    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.Value("string"))})
    splits = {}
    for split, files in groups.items():
        rows = [row for file in files for row in read_conll(file)]
        if not rows:
            raise UsageError(f"{data}: split '{split}' has no sentences; give CoNLL files with at least one")
        splits[split] = datasets.Dataset.from_list(rows, features=features)
    return datasets.DatasetDict(splits)


def read_conll(file: Path) -> list[dict[str, list[str]]]:
    """The sentences of one CoNLL file as {tokens, tags} rows; UsageError naming a line that has no tag."""
    rows: list[dict[str, list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    with file.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields or fields[0] == DOCSTART:
                if tokens:
                    rows.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
                continue
            if len(fields) < 2:
                raise UsageError(f"{file} line {number} ({quoted(line.strip())}) has no tag; a CoNLL line is a "
                                 "token and its tag (the last column), with a blank line between sentences")
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    return rows


# ---- tokens and tags of rows ----------------------------------------------------------------------


def cell_list(value: Any) -> list:
    """A tokens or tags cell as a list: a list as it is; text holding a JSON (or Python) list, as CSV writes
    one; else white-space separated words."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None:
        return []
    text = str(value).strip()
    if text.startswith("["):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(text)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return parsed
    return text.split()


def values(rows, column: str) -> list:
    """A column of a Dataset (read column-wise) or of a batch of `datasets.map`."""
    return column_list(rows, column) if hasattr(rows, "with_format") else list(rows[column])


def row_tokens(rows, column: str) -> list[list[str]]:
    """Each row's words as text."""
    return [[str(token) for token in cell_list(value)] for value in values(rows, column)]


def row_tags(rows, column: str) -> list[list[str]]:
    """Each row's tag names (ClassLabel ids turned into their names)."""
    names = feature_names(rows.features[column]) if hasattr(rows, "features") else None
    if names is not None:
        return [[names[v] for v in cell_list(value)] for value in values(rows, column)]
    return [[label_name(v) for v in cell_list(value)] for value in values(rows, column)]


def check_sentences(rows, columns: dict[str, str], where: str,
                    ids: Optional[list] = None) -> tuple[list[list[str]], list[list[str]]]:
    """Every row's (tokens, tags); UsageError naming rows with no tokens or a tag count that differs."""
    check_text_columns(rows, {columns["tokens"]: "--tokens-column"}, where, ids, lists=True)
    check_no_missing(rows, [columns["tokens"], columns["tags"]], where, ids=ids)
    tokens, tags = row_tokens(rows, columns["tokens"]), row_tags(rows, columns["tags"])
    for i, (words, labels) in enumerate(zip(tokens, tags)):
        name = describe_rows([i], ids)
        if not words:
            raise UsageError(f"{name} of {where} has no tokens in column '{columns['tokens']}'; remove it or "
                             "give it its words")
        if len(words) != len(labels):
            raise UsageError(f"{name} of {where} has {len(words)} tokens but {len(labels)} tags (columns "
                             f"'{columns['tokens']}', '{columns['tags']}'); give exactly one tag per token")
    return tokens, tags


# ---- free text ------------------------------------------------------------------------------------


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The words of free text (see WORD) and their character spans in it."""
    found = list(WORD.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def joined_spans(words: list[str]) -> list[tuple[int, int]]:
    """Character spans of `words` in the words joined by single spaces (how given tokens are shown as text)."""
    spans, at = [], 0
    for word in words:
        spans.append((at, at + len(word)))
        at += len(word) + 1
    return spans
