"""Naming rows: the ids eval_predictions.jsonl gives them, and how messages name the rows they refuse (an id, a line
of the user's file, else a position)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ftune.data.tables import column_list

ID_COLUMNS = ("id", "idx", "guid")


def row_ids(rows, positions: Iterable[int]) -> list[Any]:
    """What names each row in eval_predictions.jsonl: the data's own id column (id, idx, guid) when it has one,
    else the row's 0-based index in its source split (`positions`, as recorded in split.json)."""
    for name in ID_COLUMNS:
        if name in rows.column_names:
            return column_list(rows, name)
    return list(positions)



# The most rows a message names; it gives the count of the others.
SHOWN_ROWS = 20


def describe_rows(positions: list[int], ids=None, most: int = SHOWN_ROWS) -> str:
    """Some rows as the user knows them ("lines 4, 9", "ids r3", "rows 17, 20"): the first `most`, then how many
    more there are."""
    return describe_row_groups([(positions, ids, "")], most)


def describe_row_groups(groups: list[tuple[list[int], Any, str]], most: int = SHOWN_ROWS) -> str:
    """Rows of several datasets, each group (positions, how its rows are named, where they are): rows named alike
    (lines of one file, ids) are listed together in order, rows known only by position per group ("the held-out
    split row 3"); the first `most` in all, then how many more there are."""
    by_kind: dict[str, list[str]] = {}
    for positions, ids, where in groups:
        shown = positions[:most]
        if not shown:
            continue
        if isinstance(ids, RowNames):
            kind, names = ids.describe(shown)
        else:
            kind, names = "row", [str(ids[i] if ids is not None else i) for i in shown]
        if kind == "row" and where:
            kind = f"{where} row"
        by_kind.setdefault(kind, []).extend(names)
    parts, left = [], most
    for kind, names in by_kind.items():
        names = sorted(names, key=_natural)[:left]
        if names:
            parts.append(f"{kind}{'s' if len(names) > 1 else ''} {', '.join(names)}")
            left -= len(names)
    more = sum(len(positions) for positions, _, _ in groups) - (most - left)
    return "; ".join(parts) + (f" and {more} more" if more > 0 else "")


def quoted(text: str, limit: int = 40) -> str:
    """A value from the user's data as a message quotes it: in quotes, cut after `limit` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _natural(name: str) -> list[tuple[int, Any]]:
    """A sort key that puts "line 9" before "line 10" and id "r2" before "r10"."""
    import re

    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


@dataclass
class RowNames:
    """How messages name the rows of a split: by the data's id column, else by their line in the user's file
    (one .jsonl/.csv/.tsv file whose lines are its rows), else by their 0-based index in the source split."""

    positions: Sequence[int]             # each row's index in its source split
    id_values: Optional[list] = None     # the data's id column, when it has one
    file: Optional[Path] = None          # the single file the source split was read from
    source_rows: int = 0                 # how many rows the source split has

    def describe(self, rows: list[int]) -> tuple[str, list[str]]:
        """(what the names are, the names) of `rows`, e.g. ("line", ["4", "9"])."""
        if self.id_values is not None:
            return "id", [str(self.id_values[i]) for i in rows]
        first_line = self._first_line()
        if first_line is not None:
            return f"{self.file.name} line", [str(self.positions[i] + first_line) for i in rows]
        return "row", [str(self.positions[i]) for i in rows]

    def _first_line(self) -> Optional[int]:
        """The file line of row 0 when lines and rows correspond one to one, else None."""
        if self.file is None or self.file.suffix.lower() not in (".jsonl", ".csv", ".tsv"):
            return None
        with self.file.open("rb") as handle:
            lines = handle.read().splitlines()
        if any(not line.strip() for line in lines):
            return None
        header = 0 if self.file.suffix.lower() == ".jsonl" else 1
        return header + 1 if len(lines) - header == self.source_rows else None


def row_names(source, split: str, rows, positions: Sequence[int]) -> RowNames:
    """RowNames for `rows`, taken at `positions` of `source[split]`."""
    id_column = next((name for name in ID_COLUMNS if name in rows.column_names), None)
    files = getattr(source, "source_files", {}).get(split, [])
    return RowNames(positions=positions, id_values=column_list(rows, id_column) if id_column else None,
                    file=files[0] if len(files) == 1 else None, source_rows=len(source[split]))
