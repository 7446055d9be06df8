"""Class labels, shared by the tasks that predict classes (classify: one per row; ner: one per word).

Labels may be strings, ints or floats, or a datasets ClassLabel; a run knows them by name, in id order, and
writes the names into the model config's id2label/label2id, so the saved model speaks them. Values that mean
the same class are one class: 1 and 1.0 are both "1"; two texts that spell the same number ("1", "01") are
an error, since no one can say which was meant.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from ftune.data import arrow_column, column_list
from ftune.errors import UsageError


def label_name(value: Any) -> str:
    """The name of one label value: whole floats lose their ".0", so 1 and 1.0 name one class."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def feature_names(feature: Any) -> Optional[list[str]]:
    """The class names of a ClassLabel feature (or of the ClassLabel inside a list feature), else None."""
    inner = getattr(feature, "feature", None)
    if inner is not None and hasattr(inner, "names"):
        return list(inner.names)
    return list(feature.names) if hasattr(feature, "names") else None


def class_names(values: Iterable[Any], feature: Any = None, *, column: str = "label") -> list[str]:
    """Class names in id order: a ClassLabel's names, else the distinct values sorted (numbers numerically)."""
    names = feature_names(feature)
    if names is not None:
        return names
    distinct = {v for v in values if v is not None}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        return list(dict.fromkeys(label_name(v) for v in sorted(distinct)))
    found = sorted({label_name(v) for v in distinct})
    check_no_clash(found, column)
    return found


def check_no_clash(names: list[str], column: str) -> None:
    """Raise when two label texts spell the same number ("1" and "1.0"): one class or two is anyone's guess."""
    by_number: dict[float, list[str]] = {}
    for name in names:
        try:
            number = float(name)
        except ValueError:
            continue
        by_number.setdefault(number, []).append(name)
    clashes = [spellings for spellings in by_number.values() if len(spellings) > 1]
    if clashes:
        shown = "; ".join(" and ".join(repr(s) for s in spellings) for spellings in clashes[:3])
        raise UsageError(f"column '{column}' spells one label in several ways ({shown}); write each class one way")


def row_labels(ds, column: str) -> list[str]:
    """Each row's label name (ClassLabel ids turned into their names), read column-wise: the names of the column's
    distinct values, looked up per row, so a million rows of a few classes hold a few strings, not a million."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = arrow_column(ds, column)
    names = feature_names(ds.features[column])
    if pa.types.is_nested(values.type):  # lists of labels (Arrow has no `unique` for them): named row by row
        return [label_name(v) for v in column_list(ds, column)]
    distinct = pc.unique(values)
    named = [names[v] if names is not None and v is not None else label_name(v)
             for v in ds.features.decode_column(distinct.to_pylist(), column)]
    positions = pc.index_in(values, value_set=distinct)
    return [named[i] for i in positions.to_numpy().tolist()]


def distinct_values(ds, column: str) -> list[Any]:
    """The distinct values of a column, read column-wise (Arrow), not row by row, in the order they first appear
    (datasets' own `unique` first copies a selection of rows, e.g. the training part of a split, to a new table)."""
    import pyarrow.compute as pc

    values = pc.unique(ds.with_format("arrow")[column]).to_pylist()
    return ds.features.decode_column(values, column)


def check_known(found: Iterable[str], known: list[str], where: str) -> None:
    """Raise UsageError naming labels in `found` that are not among the run's `known` labels."""
    unseen = sorted(set(found) - set(known))
    if unseen:
        raise UsageError(f"{where} has labels this run never learned: {', '.join(unseen[:10])} (it knows "
                         f"{', '.join(known[:20])})")


def label_config(labels: list[str]) -> dict[str, Any]:
    """from_pretrained arguments that size the head and name its classes."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


# ---- label sets: several classes per row (multi-label classification) --------------------------------


def row_label_values(value: Any, separator: str) -> list[Any]:
    """The raw labels of one row: a list as it is, a string split at `separator`, nothing for null or blank."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(separator) if part.strip()]
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None]
    return [value]


def row_label_sets(ds, column: str, separator: str) -> list[list[str]]:
    """Each row's label names, each name once, in the order the row gives them (ClassLabel ids named)."""
    names = feature_names(ds.features[column])
    sets = []
    for value in column_list(ds, column):
        found = row_label_values(value, separator)
        named = [names[v] for v in found] if names is not None else [label_name(v) for v in found]
        sets.append(list(dict.fromkeys(named)))
    return sets


def distinct_set_values(ds, column: str, separator: str) -> list[Any]:
    """The distinct raw labels over all rows of a label-set column (numbers stay numbers, for sorting)."""
    seen: dict[Any, None] = {}
    for value in column_list(ds, column):  # Arrow has no `unique` for list columns
        for item in row_label_values(value, separator):
            seen.setdefault(item, None)
    return list(seen)
