"""Which column plays which role, and what the columns hold: text where text is read, a value in every row.

Every check reads Arrow columns, not rows, and names the rows it refuses as the user knows them (ftune.data.rows).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from ftune.data.rows import describe_row_groups, describe_rows
from ftune.data.tables import arrow_column, column_list
from ftune.errors import UsageError


def pick_column(columns: Iterable[str], given: Optional[str], candidates: Iterable[str], *, what: str,
                option: str, required: bool = True) -> Optional[str]:
    """The column named by `given`, else the first present of `candidates` (case-insensitive)."""
    columns = list(columns)
    if given:
        if given not in columns:
            raise UsageError(f"no column '{given}' for {what} ({option}); the columns are: {', '.join(columns)}")
        return given
    lower = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lower:
            return lower[name]
    if required:
        raise UsageError(f"cannot tell which column holds the {what}; pass {option} (the columns are: "
                         f"{', '.join(columns)})")
    return None


def check_text_columns(ds, columns: dict[str, str], where: str, ids=None, *, lists: bool = False) -> None:
    """Raise UsageError when a column that should hold text holds something else (numbers, true/false values,
    records): a tokenizer cannot read them, and text made of them would train on digits. It names the column, what
    it holds and the option that chooses it, with the columns that do hold text.

    `columns` maps each column to the option that chooses it (e.g. {"text": "--text-column"}); `lists`: a list of
    texts per row is text too (a summary's sentences, a sentence's words). Null cells pass (check_no_missing names
    them); a column of mixed types (datasets keeps it as JSON) is checked row by row, naming the rows.
    """
    _check_text([(ds, ids, where)], columns, lists)


def check_split_text(split, columns: dict[str, str], *, lists: bool = False) -> None:
    """`check_text_columns` on the training and the held-out rows of a HeldOutSplit at once (a message names the
    rows of both)."""
    _check_text([(split.train, split.train_names, "the training split"),
                 (split.eval, split.eval_names, "the held-out split")], columns, lists)


def _check_text(parts: list[tuple[Any, Any, str]], columns: dict[str, str], lists: bool) -> None:
    import pyarrow.compute as pc

    for column, option in columns.items():
        groups = []
        for ds, ids, where in parts:
            kind = _not_text(ds.features[column], lists)
            if kind is None:
                continue
            others = [c for c, feature in ds.features.items() if c != column and _not_text(feature, lists) is None
                      and getattr(feature, "dtype", "") != "null"]
            choose = (f"pass {option} the column that holds the text (columns with text: "
                      f"{', '.join(others) if others else 'none'})")
            if kind != _MIXED:
                examples = pc.drop_null(arrow_column(ds, column).slice(0, 1000)).slice(0, 3).to_pylist()
                shown = f" (e.g. {', '.join(json.dumps(v, default=str) for v in examples)})" if examples else ""
                raise UsageError(f"column '{column}' of {where} holds {kind}, not text{shown}; {choose}")
            values = column_list(ds, column)
            bad = [i for i, value in enumerate(values) if value is not None and _value_kind(value, lists)]
            if bad:
                groups.append((bad, ids, where, _value_kind(values[bad[0]], lists), choose))
        if groups:
            count = sum(len(bad) for bad, *_ in groups)
            shown = describe_row_groups([(bad, ids, where) for bad, ids, where, _, _ in groups])
            _, _, where, kind, choose = groups[0]
            where = f" of {where}" if len(parts) == 1 else ""
            raise UsageError(f"{count} row(s){where} hold {kind} in column '{column}', not text ({shown}); write them "
                             f"as text (in quotes), or {choose}")


_MIXED = "values of several types"


def _not_text(feature, lists: bool) -> Optional[str]:
    """What a column of `feature` holds when that is not text ("numbers" ...), None when it is text (or only nulls),
    _MIXED when its values have several types (a Json column: to be checked row by row)."""
    from datasets import ClassLabel, LargeList, List, Value
    from datasets.features.features import Json

    if isinstance(feature, Value):
        if feature.dtype in ("string", "large_string", "null"):
            return None
        if feature.dtype == "bool":
            return "true/false values"
        if feature.dtype.startswith(("int", "uint", "float", "double", "decimal")):
            return "numbers"
        return f"{feature.dtype} values"
    if isinstance(feature, ClassLabel):
        return "numbers (class ids)"
    if isinstance(feature, Json):
        return _MIXED
    if isinstance(feature, (List, LargeList)):
        inner = _not_text(feature.feature, False)
        if lists and inner in (None, _MIXED):
            return inner
        return f"lists of {inner}" if inner not in (None, _MIXED) else "lists"
    if isinstance(feature, dict):
        return "records"
    return f"{type(feature).__name__} values"


def _value_kind(value: Any, lists: bool) -> Optional[str]:
    """What a single cell holds when it is not text, else None."""
    if isinstance(value, str):
        return None
    if isinstance(value, bool):
        return "true/false values"
    if isinstance(value, (int, float)):
        return "numbers"
    if isinstance(value, (list, tuple)):
        if lists and all(v is None or isinstance(v, str) for v in value):
            return None
        return "lists"
    if isinstance(value, dict):
        return "records"
    return f"{type(value).__name__} values"


def check_no_missing(ds, columns: Iterable[str], where: str, ids=None) -> None:
    """Raise if any row has no value in one of `columns` (null, or blank text), naming such rows.

    The check runs on the Arrow columns, not row by row. `ids` names the rows: a RowNames (lines of the user's
    file, or ids), or a list of ids; else rows are named by their position in `ds`.
    """
    for column in columns:
        bad = missing_rows(ds, column)
        if bad:
            raise UsageError(f"{len(bad)} row(s) of {where} have no value in column '{column}' "
                             f"({describe_rows(bad, ids)}); fill or remove them")


def check_split_filled(split, columns: Iterable[str]) -> None:
    """`check_no_missing` over the training and the held-out rows of a HeldOutSplit at once, so that the message
    names the rows of both (the held-out rows of a carve are lines of the same file)."""
    parts = ((split.train, split.train_names, "the training split"),
             (split.eval, split.eval_names, "the held-out split"))
    for column in columns:
        groups = [(missing_rows(ds, column), names, where) for ds, names, where in parts]
        count = sum(len(bad) for bad, _, _ in groups)
        if count:
            raise UsageError(f"{count} row(s) have no value in column '{column}' ({describe_row_groups(groups)}); "
                             "fill or remove them")


def missing_rows(ds, column: str) -> list[int]:
    """Positions of the rows of `ds` with no value in `column`: null, or text that is blank."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = arrow_column(ds, column)
    text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    bad, offset = [], 0
    for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
        missing = pc.is_null(chunk)
        if text:  # chunk by chunk: the trimmed copy of a whole text column could take as much memory again
            missing = pc.or_(missing, pc.fill_null(pc.equal(pc.utf8_trim_whitespace(chunk), ""), True))
        bad += [offset + i for i in pc.indices_nonzero(missing).to_pylist()]
        offset += len(chunk)
    return bad
