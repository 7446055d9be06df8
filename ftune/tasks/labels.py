"""Class labels, shared by the tasks that predict classes (classify: one per row; ner: one per word).

Labels may be strings, ints or floats, or a datasets ClassLabel; a run knows them by name, in id order, and
writes the names into the model config's id2label/label2id, so the saved model speaks them. Values that mean
the same class are one class: 1 and 1.0 are both "1"; two texts that spell the same number ("1", "01") are
an error, since no one can say which was meant. So are texts that differ only by case or surrounding spaces
("law", " law", "Law"), unless the run merges them (--merge-label-variants): each group of such variants becomes
one class, named by its most common spelling among the training rows (without surrounding spaces).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Iterable, Optional

from ftune.data import arrow_column, column_list, describe_row_groups
from ftune.errors import UsageError

MERGE_FLAG = "--merge-label-variants"


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


def labels_fact(labels: list[str]) -> str:
    """The model card's line naming a run's classes (or tags), in id order."""
    return f"**Labels:** {', '.join(map(str, labels))}"


def peft_labels_usage(peft_class: str, run_path: str, labels: list[str], extra: str = "") -> str:
    """Python for the model card that loads a LoRA run of a task that predicts classes: the head is sized and named
    from the labels (`extra`: more from_pretrained arguments, e.g. the problem type)."""
    return (f"from peft import {peft_class}\nfrom transformers import AutoTokenizer\n\n"
            f"labels = {labels!r}\n"
            f"model = {peft_class}.from_pretrained(\n    \"{run_path}\", "
            f"num_labels={len(labels)}, id2label=dict(enumerate(labels)),\n"
            f"    label2id={{name: i for i, name in enumerate(labels)}}{extra})\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\")")


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


# ---- variants: one label spelled with other case or surrounding spaces ---------------------------------


def variant_key(name: str) -> str:
    """What label names that differ only by case or surrounding spaces have in common."""
    return name.strip().casefold()


def resolve_variants(parts: list[tuple[list[list[str]], Any, str]], column: str, *, merge: bool,
                     what: str = "label") -> dict[str, str]:
    """The label names of the training and held-out rows checked for variants ("law", " law", "Law").

    `parts`: for each of the training and the held-out rows (in that order), the label names of each row (a list
    per row: one name, a label set, a sentence's tags), how its rows are named, and where they are. Without
    `merge`, variants are a UsageError naming each spelling and its rows; with it, the result maps every name that
    changes to its class's name, the most common spelling in the training rows (ties: the first in sorted order),
    without surrounding spaces — and a note says what was merged.
    """
    from ftune import console

    names = {name for rows, _, _ in parts for row in rows for name in row}
    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault(variant_key(name), set()).add(name)
    variants = sorted(sorted(group) for group in groups.values() if len(group) > 1)
    if variants and not merge:
        raise UsageError(f"column '{column}' spells one {what} in several ways that differ only by case or "
                         f"surrounding spaces: {_spellings(variants, parts)}; write each {what} one way, or pass "
                         f"{MERGE_FLAG} to make each group one {what} (its most common spelling)")
    if not merge:
        return {}
    counts = Counter(name for row in parts[0][0] for name in row)
    renamed = {}
    for group in groups.values():
        canonical = min(group, key=lambda n: (-counts[n], n)).strip()
        renamed.update({name: canonical for name in group if name != canonical})
    if renamed:
        shown = "; ".join(f"{', '.join(repr(n) for n in sorted(group))} -> {renamed.get(group[0], group[0])!r}"
                          for group in variants[:10])
        stripped = len([n for n in renamed if not any(n in group for group in variants)])
        console.note(f"{MERGE_FLAG}: {len(variants)} group(s) of {what}s merged in column '{column}'"
                     + (f" ({shown}{'; ...' if len(variants) > 10 else ''})" if variants else "")
                     + (f"; surrounding spaces removed from {stripped} other {what}(s)" if stripped else ""))
    return renamed


def _spellings(variants: list[list[str]], parts, most: int = 3) -> str:
    """Each spelling of the first `most` groups of variants with the rows that hold it."""
    shown = []
    for group in variants[:most]:
        spelled = []
        for name in group:
            rows = [([i for i, row in enumerate(names) if name in row], ids, where) for names, ids, where in parts]
            spelled.append(f"{name!r} ({describe_row_groups(rows, most=5)})")
        shown.append(", ".join(spelled))
    more = f"; and {len(variants) - most} more group(s)" if len(variants) > most else ""
    return "; ".join(shown) + more


def merged_names(labels: list[str]) -> Callable[[str], str]:
    """A run's name for a label of its data when it merges variants (--merge-label-variants): the label in `labels`
    it is a variant of, else the name itself (a label the run never learned stays as it is)."""
    by_key = {variant_key(name): name for name in labels}
    return lambda name: by_key.get(variant_key(name), name)
