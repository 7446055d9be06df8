"""Rows held in memory as one list per column: the rows of one `ftune predict` call or one served batch, and their
features, without a `datasets.Dataset`.

Building a Dataset, tokenising it through `map` and selecting its rows costs milliseconds a call, more than the
tokeniser itself and, for a row or two, a large part of the model's forward pass; none of it buys anything for rows
that are scored once and never cached. `InMemoryRows` offers the part of the Dataset API the predict path reads
(`column_names`, a column by name, a row or a slice of rows, `remove_columns`, `select`, `to_list`, `len`; a
Trainer's `predict` reads it as a map-style dataset), and `column_list` and `tokenize_rows` (ftune.data.tables)
take it as they take a Dataset, so a task's `features` and `decode` read either alike.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence, Union


class InMemoryRows:
    """Rows as lists by column, all of one length (see the module docstring)."""

    features = None     # no datasets Features: the values are as given (a ClassLabel id is not decoded to a name)

    def __init__(self, columns: dict[str, list]):
        self._columns = {name: list(values) for name, values in columns.items()}
        self._length = len(next(iter(self._columns.values()))) if self._columns else 0

    @classmethod
    def from_list(cls, rows: list[dict[str, Any]]) -> "InMemoryRows":
        """The columns of the first row, a missing value None (as `datasets.Dataset.from_list` reads rows)."""
        return cls({name: [row.get(name) for row in rows] for name in (rows[0] if rows else {})})

    @property
    def column_names(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: Union[str, int, slice]):
        """A column's values by name, a row by its position (as a Trainer's dataloader reads it), or a slice of rows
        as lists by column (a Dataset's batch)."""
        if isinstance(key, str):
            return self._columns[key]
        return {name: values[key] for name, values in self._columns.items()}

    def remove_columns(self, names: Union[str, Iterable[str]]) -> "InMemoryRows":
        dropped = {names} if isinstance(names, str) else set(names)
        return InMemoryRows({name: values for name, values in self._columns.items() if name not in dropped})

    def select(self, indices: Sequence[int]) -> "InMemoryRows":
        return InMemoryRows({name: [values[i] for i in indices] for name, values in self._columns.items()})

    def to_list(self) -> list[dict[str, Any]]:
        names = list(self._columns)
        return [dict(zip(names, values)) for values in zip(*self._columns.values())] if names else []
