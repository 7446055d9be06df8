"""The data layouts of `ftune qa` and their answers.

Data comes in three layouts: the Hub SQuAD layout (id, question, context, answers{text[], answer_start[]}),
the original nested SQuAD JSON files (data -> paragraphs -> qas, flattened here into the Hub layout), and
flat csv/jsonl rows with an answer text and an optional start (found in the context when missing). Data
with any unanswerable question (no answer, or is_impossible) is SQuAD v2: the model may answer "".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from ftune.data import check_no_missing, check_text_columns, column_list, describe_rows, quoted, split_of
from ftune.errors import UsageError


def row_answers(value: Any, start: Any, context: str) -> tuple[list[str], list[int]]:
    """Gold answer texts and character starts of one row, from any layout; raise ValueError when an answer
    is not where its start says or (no start given) not in the context at all."""
    if isinstance(value, dict):  # Hub layout: {"text": [...], "answer_start": [...]}
        texts, starts = value.get("text"), value.get("answer_start")
    else:
        texts, starts = value, start
    texts = [texts] if isinstance(texts, str) or texts is None else list(texts)
    texts = [t for t in texts if t is not None and str(t) != ""]
    starts = list(starts) if isinstance(starts, (list, tuple)) else [starts] * len(texts)
    if len(starts) != len(texts):
        raise ValueError(f"{len(texts)} answer texts but {len(starts)} answer starts")
    resolved = []
    for text, at in zip(texts, starts):
        text = str(text)
        if at is None or (isinstance(at, float) and math.isnan(at)):
            found = context.find(text)
            if found < 0:
                raise ValueError(f"answer {quoted(text)} is not in its context")
            resolved.append(found)
            continue
        at = int(at)
        if at < 0:  # Python would slice from the end and hide the mistake
            raise ValueError(f"answer_start {at} is negative")
        if context[at:at + len(text)] != text:
            raise ValueError(f"answer_start {at} points at {quoted(context[at:at + len(text)])}, not at the answer "
                             f"{quoted(text)}")
        resolved.append(at)
    return texts, resolved


def check_rows(ds, columns: dict[str, Optional[str]], where: str,
               ids: Optional[list] = None) -> list[tuple[list[str], list[int]]]:
    """Every row's answers; raise UsageError naming the rows with no question or context, or a misplaced answer."""
    check_text_columns(ds, text_options(columns), where, ids)
    check_no_missing(ds, [columns["question"], columns["context"]], where, ids=ids)
    answers, bad = [], []
    for i, values in enumerate(zip(column_values(ds, columns["answers"]), column_values(ds, columns["answer_start"]),
                                   column_list(ds, columns["context"]))):
        try:
            answers.append(row_answers(*values))
        except ValueError as exc:
            bad.append(f"{describe_rows([i], ids)}: {exc}")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UsageError(f"{len(bad)} row(s) of {where} have answers that do not match their context — "
                         f"{'; '.join(bad[:3])}{more}; fix the answer or its start, or remove those rows")
    return answers


def text_options(columns: dict[str, Optional[str]]) -> dict[str, str]:
    """The question and context columns and the options that choose them."""
    return {columns["question"]: "--question-column", columns["context"]: "--context-column"}


def load_nested_squad(data: Optional[str]):
    """A DatasetDict from original SQuAD JSON files (a file, or a folder such as train-v2.0.json +
    dev-v2.0.json), flattened into the Hub layout; None when `data` is something else."""
    if not data:
        return None
    path = Path(data).expanduser()
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    if not files or not all(f.suffix.lower() == ".json" and _looks_nested(f) for f in files):
        return None
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"), "title": datasets.Value("string"), "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {"text": datasets.List(datasets.Value("string")),
                    "answer_start": datasets.List(datasets.Value("int32"))}})
    splits: dict[str, list[dict]] = {}
    for file in files:
        split = "train" if path.is_file() else split_of(file)
        splits.setdefault(split, []).extend(flatten_squad(file))
    for split, rows in splits.items():
        if not rows:
            raise UsageError(f"{data}: split '{split}' has no questions; give SQuAD files with at least one")
    return datasets.DatasetDict({s: datasets.Dataset.from_list(rows, features=features) for s, rows in splits.items()})


def _looks_nested(file: Path) -> bool:
    with file.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(65536)
    return head.lstrip().startswith("{") and '"data"' in head and '"paragraphs"' in head


def flatten_squad(file: Path) -> list[dict]:
    """One Hub-layout row per question of a SQuAD v1.1/v2.0 file; is_impossible questions get no answers."""
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        rows = []
        for article in document["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                    rows.append({"id": str(qa["id"]), "title": article.get("title", ""),
                                 "context": paragraph["context"], "question": qa["question"],
                                 "answers": {"text": [a["text"] for a in answers],
                                             "answer_start": [int(a["answer_start"]) for a in answers]}})
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{file} is not a valid SQuAD JSON file ({type(exc).__name__}: {exc}); expected "
                         "data -> paragraphs -> context, qas -> id, question, answers") from None
    return rows


def column_values(batch, name: Optional[str]) -> list:
    """A column's values, or Nones when the column is not used (no answer_start column)."""
    if name is None:
        size = len(batch) if hasattr(batch, "column_names") else len(next(iter(batch.values())))
        return [None] * size
    return column_list(batch, name) if hasattr(batch, "column_names") else list(batch[name])
