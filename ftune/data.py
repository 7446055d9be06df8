"""Loading data from any source, finding columns, and making (and recording) the held-out split.

The held-out split is recorded in the run's `split.json` — source, how it was made, the row indices it
took from its source split and a fingerprint of those rows — so `ftune eval RUN` scores the same rows.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from ftune.config import MIN_TRAIN_ROWS
from ftune.errors import UsageError
from ftune.hub import require_hub_dataset

# File extension -> (datasets builder, extra builder arguments).
FILE_READERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}
EVAL_SPLIT_NAMES = ("validation", "valid", "dev", "val", "test")
ID_COLUMNS = ("id", "idx", "guid")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "eval": "validation"}


def quiet_datasets():
    """The datasets library, with its per-step progress bars and error logs off unless --debug.

    ftune reports what went wrong itself, in one line; datasets' own logging would repeat it with a traceback.
    """
    import logging
    import os

    import datasets

    if os.environ.get("FTUNE_DEBUG") != "1":
        datasets.disable_progress_bars()
        logging.getLogger("datasets").setLevel(logging.CRITICAL)
    return datasets


def load_source(data: str, data_config: Optional[str] = None):
    """Load `--data` as a DatasetDict: a file, a folder of split files, a save_to_disk folder or a Hub id."""
    datasets = quiet_datasets()

    path = Path(data).expanduser()
    require_regular(path, "--data", "a data file, or a folder of them")
    if path.is_file():
        return _load_files({"train": [path]}, data)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        return _load_files(_split_files(path), data)
    if path.suffix.lower() in FILE_READERS or data.startswith((".", "/", "~")) or data.count("/") > 1:
        raise UsageError(f"data file {data} does not exist; check the path given to --data")
    require_hub_dataset(data)
    try:
        loaded = datasets.load_dataset(data, data_config)
    except ValueError as exc:
        if "config" in str(exc).lower():
            raise UsageError(f"dataset {data} needs a configuration: pass --data-config ({exc})") from None
        raise
    except (FileNotFoundError, ConnectionError) as exc:
        raise UsageError(f"dataset {data} could not be loaded ({exc}); pass a local file or folder to --data") from None
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)


def require_regular(path: Path, flag: str, wanted: str) -> None:
    """Raise UsageError when `path` exists but is neither a regular file nor a folder (a device such as /dev/null, a
    pipe, a socket): ftune reads a data file more than once (to check it, then to load it)."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise UsageError(f"{flag} {path} is not a regular file (it is a device, pipe or socket); save the input to a "
                         f"file and pass {wanted}")


def _split_files(folder: Path) -> dict[str, list[Path]]:
    """Group a folder's data files by split: train.csv, validation.jsonl, test-00000.parquet, dev.tsv ..."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in FILE_READERS or not file.is_file():
            continue
        stem = file.stem.lower().split("-")[0].split(".")[0]
        groups[SPLIT_ALIASES.get(stem, stem)].append(file)
    if not groups:
        known = ", ".join(FILE_READERS)
        raise UsageError(f"folder {folder} holds no data files ({known}); put e.g. train.csv and test.csv in it")
    return dict(groups)


def _load_files(groups: dict[str, list[Path]], data: str):
    datasets = quiet_datasets()

    suffixes = {f.suffix.lower() for files in groups.values() for f in files}
    readers = {repr(FILE_READERS[s]) for s in suffixes if s in FILE_READERS and s not in (".json", ".jsonl")}
    builders = {FILE_READERS[s][0] for s in suffixes}
    if len(builders) > 1 or (len(readers) > 1):
        raise UsageError(f"{data} mixes file types ({', '.join(sorted(suffixes))}); use one type per dataset")
    if not suffixes <= FILE_READERS.keys():
        raise UsageError(f"cannot read {data}: use a .csv, .tsv, .json, .jsonl, .parquet or .txt file")
    builder, extra = FILE_READERS[sorted(suffixes)[0]]
    files = [f for split_files in groups.values() for f in split_files]
    blank = [f for f in files if _is_blank(f)]
    if blank:
        raise UsageError(f"{blank[0]} has no rows; give data with at least one example")
    data_files = {split: [str(f) for f in split_files] for split, split_files in groups.items()}
    try:
        loaded = datasets.load_dataset(builder, data_files=data_files, **extra)
    except Exception as exc:  # the readers raise many types (pandas, pyarrow, json) for a malformed file
        for file in files:
            if builder != "parquet":
                _require_utf8(file)
            if file.suffix.lower() == ".jsonl":
                _require_json_lines(file)
        detail = " ".join(str(exc).split())[:300]
        if "corresponds to no data" in detail:
            raise UsageError(f"{data} has no rows; give data with at least one example") from None
        cause = " ".join(str(exc.__cause__ or "").split())[:200]
        raise UsageError(f"could not read {data}: {detail}{' (' + cause + ')' if cause else ''}; fix the malformed "
                         "rows or convert the file") from None
    for split, ds in loaded.items():
        if len(ds) == 0:
            raise UsageError(f"{data}: split '{split}' has no rows; give data with at least one example")
    loaded.source_files = {split: list(split_files) for split, split_files in groups.items()}  # to name rows
    return loaded


def _is_blank(file: Path) -> bool:
    """A file with nothing but white space (read only as far as the first other byte)."""
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _require_utf8(file: Path) -> None:
    """Raise UsageError naming the line of the first byte that is not UTF-8."""
    decoder = __import__("codecs").getincrementaldecoder("utf-8")()
    line = 1
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk[:exc.start].count(b"\n")
                raise UsageError(f"{file} is not UTF-8 text (line {line} has the byte 0x{chunk[exc.start]:02x}); "
                                 f"convert it, e.g. iconv -f latin1 -t utf-8 {file} > {file.stem}.utf8{file.suffix}"
                                 ) from None
            line += chunk.count(b"\n")


def _require_json_lines(file: Path) -> None:
    """Raise UsageError naming the first line of a .jsonl file that is not one JSON object."""
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{file} line {number} is not valid JSON ({exc.msg}); write one JSON object per "
                                 "line") from None
            if not isinstance(row, dict):
                raise UsageError(f"{file} line {number} is not a JSON object; write one object per line") from None


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
        return header + 1 if len(lines) - header == self._source_rows else None

    _source_rows: int = 0


def row_names(source, split: str, rows, positions: Sequence[int]) -> RowNames:
    """RowNames for `rows`, taken at `positions` of `source[split]`."""
    id_column = next((name for name in ID_COLUMNS if name in rows.column_names), None)
    files = getattr(source, "source_files", {}).get(split, [])
    names = RowNames(positions=positions, id_values=column_list(rows, id_column) if id_column else None,
                     file=files[0] if len(files) == 1 else None)
    names._source_rows = len(source[split])
    return names


def tokenize_rows(rows, encode: Callable, config, *, desc: str, **kwargs):
    """`rows.map(encode, batched=True)` dropping the raw columns, on `--preprocessing-workers` processes for large
    data. datasets caches the result under the rows' fingerprint and a hash of `encode` (with the values it
    holds: keep them to the tokenizer and the options that shape the features), so a rerun on the same data,
    tokenizer and options reads the features back instead of tokenising again."""
    workers = getattr(config, "preprocessing_workers", 1) or 1
    num_proc = workers if workers > 1 and len(rows) >= 1000 * workers else None
    return rows.map(encode, batched=True, remove_columns=rows.column_names, desc=desc, num_proc=num_proc, **kwargs)


def arrow_column(ds, column: str):
    """A column of `ds` as an Arrow array, read in Arrow's own code even through a row selection (datasets gathers
    the rows of a selection one by one in Python)."""
    values = ds.data.column(column)
    indices = getattr(ds, "_indices", None)
    return values.take(indices.column(0)) if indices is not None else values


def column_list(ds, column: str) -> list[Any]:
    """A column's values as a Python list, read column-wise (datasets' own `ds[column]` iterates row by row);
    values stored encoded (e.g. a column of mixed types, kept as JSON text) are decoded as datasets would."""
    return ds.features.decode_column(arrow_column(ds, column).to_pylist(), column)


def derived_fingerprint(ds, *parts: Any) -> str:
    """A fingerprint for a dataset made from `ds` by an operation described by `parts` (names, indices, values).

    datasets would hash the same arguments with its pure-Python pickler, a few seconds for a list of a million
    indices; the standard pickler takes milliseconds.
    """
    digest = hashlib.sha256(ds._fingerprint.encode())
    digest.update(pickle.dumps(parts, protocol=4))
    return digest.hexdigest()[:32]


def with_column(ds, name: str, values: list[Any]):
    """`ds.add_column(name, values)`, fingerprinted from the values by `derived_fingerprint`."""
    return ds.add_column(name, values, new_fingerprint=derived_fingerprint(ds, "add_column", name, values))


def take_rows(ds, indices: Sequence[int]):
    """`ds.select(indices)` as a dataset of its own: the rows copied, in Arrow's code, to a table of their own (a
    file beside the dataset's cache files, reused by a rerun on the same data), not an index into `ds`.

    Every later pass over the rows (checks, labels, tokenisation) then reads them in contiguous batches; through a
    selection datasets gathers them one by one, which costs more than tokenising them.
    """
    datasets = quiet_datasets()
    import numpy as np
    from datasets.table import InMemoryTable, MemoryMappedTable

    if isinstance(indices, range) and indices.step == 1:
        return ds.select(indices)  # a slice of ds: contiguous already
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0 or getattr(ds, "_indices", None) is not None:
        return ds.select(indices)
    first = int(indices[0])
    if int(indices[-1]) - first + 1 == len(indices) and bool((np.diff(indices) == 1).all()):
        return ds.select(range(first, first + len(indices)))
    fingerprint = derived_fingerprint(ds, "take_rows", indices)
    files = [f["filename"] for f in ds.cache_files]
    if not files:
        table = InMemoryTable(ds.data.table.take(indices))
    else:
        path = Path(files[0]).parent / f"ftune-rows-{fingerprint}.arrow"
        if not path.is_file():
            _write_rows(ds.data.table, indices, path)
        table = MemoryMappedTable.from_file(str(path))
    return datasets.Dataset(table, info=ds.info.copy(), split=ds.split, fingerprint=fingerprint)


def _write_rows(table, indices, path: Path, chunk: int = 65536) -> None:
    """Write `table`'s rows at `indices`, in that order, to an Arrow stream file at `path` (renamed into place once
    written, so a reader never sees half a file)."""
    import os

    import pyarrow as pa

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for start in range(0, len(indices), chunk):
                # Taken from the slice the part spans: a take from a whole chunked table first joins its chunks
                # into one copy of the table (Arrow 26: ~200 MB more memory at 2M short rows, at every take).
                part = indices[start:start + chunk]
                low = int(part.min())
                rows = table.slice(low, int(part.max()) - low + 1)
                writer.write_table(rows.take(pa.array(part - low)))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def row_ids(rows, positions: Iterable[int]) -> list[Any]:
    """What names each row in eval_predictions.jsonl: the data's own id column (id, idx, guid) when it has one,
    else the row's 0-based index in its source split (`positions`, as recorded in split.json)."""
    for name in ID_COLUMNS:
        if name in rows.column_names:
            return column_list(rows, name)
    return list(positions)


# --------------------------------------------------------------------------------------------------
# The held-out split


@dataclass
class HeldOutSplit:
    """The rows to train on and the rows to score, with the record that lets `ftune eval` find them again."""

    train: Any
    eval: Any
    eval_ids: list[Any] = field(default_factory=list)   # what names each held-out row (see `row_ids`)
    record: dict[str, Any] = field(default_factory=dict)
    train_names: Optional[RowNames] = None               # how messages name the training rows
    eval_names: Optional[RowNames] = None                # ... and the held-out rows


def build_held_out_split(source, *, data: str, data_config: Optional[str], train_split: str,
                         eval_split: Optional[str], val_fraction: float, seed: int,
                         max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
                         stratify: Optional[Callable[[Any], list]] = None) -> HeldOutSplit:
    """Pick the eval split (named, detected, or a seeded carve of the train split) and record it.

    `stratify(dataset)` returns a label per row; with it the carve keeps each class's share.
    """
    splits = list(source.keys())
    if train_split not in source:
        raise UsageError(f"no split '{train_split}' in {data} (--train-split); the splits are: {', '.join(splits)}")
    if eval_split is not None and eval_split not in source:
        raise UsageError(f"no split '{eval_split}' in {data} (--eval-split); the splits are: {', '.join(splits)}")
    if eval_split == train_split:
        raise UsageError(f"--eval-split and --train-split are both '{train_split}'; held-out rows must not be "
                         "trained on: drop --eval-split to carve them with --val-fraction")
    if eval_split is None:
        eval_split = next((name for name in EVAL_SPLIT_NAMES if name in source and name != train_split), None)
    train_full = source[train_split]
    if len(train_full) == 0:
        raise UsageError(f"split '{train_split}' of {data} is empty; give data with at least one example")

    if eval_split is not None:
        train_indices = range(len(train_full))
        eval_source = source[eval_split]
        eval_indices = list(range(len(eval_source)))
        method = {"method": "split", "eval_split": eval_split}
    else:
        labels = stratify(train_full) if stratify else None
        train_indices, eval_indices = carve_indices(len(train_full), val_fraction, seed, labels)
        if len(train_indices) < min(len(eval_indices), MIN_TRAIN_ROWS):
            raise UsageError(f"--val-fraction {val_fraction:g} leaves {len(train_indices)} of the {len(train_full)} "
                             f"rows of {data} to train on beside {len(eval_indices)} held out; a carve must leave at "
                             f"least {MIN_TRAIN_ROWS} training rows or as many as it holds out: lower --val-fraction "
                             "or give the data an eval split")
        eval_source = train_full
        method = {"method": "fraction", "eval_split": train_split, "val_fraction": val_fraction, "seed": seed,
                  "stratified": labels is not None}
    if max_train_samples is not None:
        train_indices = train_indices[:max_train_samples]
    if max_eval_samples is not None:
        eval_indices = eval_indices[:max_eval_samples]
    if len(eval_indices) == 0:
        raise UsageError(f"the held-out split of {data} is empty; raise --val-fraction or give an eval split")
    if len(train_indices) == 0:
        raise UsageError(f"no training rows are left in {data} after holding out; lower --val-fraction")

    eval_rows = take_rows(eval_source, eval_indices)
    record = {"source": data, "data_config": data_config, "train_split": train_split, **method,
              "train_rows": len(train_indices), "rows": len(eval_indices), "fingerprint": fingerprint(eval_rows),
              "indices": eval_indices}
    train_rows = take_rows(train_full, train_indices)
    return HeldOutSplit(train=train_rows, eval=eval_rows, eval_ids=row_ids(eval_rows, eval_indices), record=record,
                        train_names=row_names(source, train_split, train_rows, train_indices),
                        eval_names=row_names(source, record["eval_split"], eval_rows, eval_indices))


# What identifies held-out rows in a split.json record: where they come from, which they are, what they hold.
HELD_OUT_FIELDS = ("source", "data_config", "eval_split", "indices", "fingerprint")


def held_out_differences(record: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """How the held-out rows of `record` differ from those of `expected` (two split.json records); [] if the same."""
    differs = []
    for key in HELD_OUT_FIELDS:
        if record.get(key) != expected.get(key):
            shown = "other rows" if key in ("indices", "fingerprint") else \
                f"{expected.get(key)!r} recorded, {record.get(key)!r} now"
            differs.append(f"{key}: {shown}")
    return differs


def carve_indices(n: int, fraction: float, seed: int, labels: Optional[list] = None) -> tuple[Any, list[int]]:
    """Seeded split of range(n) into (train, eval); with labels, each class gives its share to eval. The training
    positions come as a NumPy array (8 bytes a row; a list of millions of Python ints takes five times that)."""
    import numpy as np

    rng = random.Random(seed)
    groups: dict[Any, list[int]] = defaultdict(list)
    for i in range(n):
        groups[labels[i] if labels is not None else None].append(i)
    eval_indices: list[int] = []
    for key in sorted(groups, key=str):
        members = groups[key]
        rng.shuffle(members)
        take = round(len(members) * fraction)
        if labels is not None and len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)  # every class seen in both parts when it can be
        eval_indices += members[:take]
    if not eval_indices and n >= 2:
        eval_indices = [rng.randrange(n)]
    train = np.ones(n, dtype=bool)
    train[eval_indices] = False
    return np.flatnonzero(train), sorted(eval_indices)


def fingerprint(ds) -> str:
    """SHA-256 over the rows' JSON, so a changed data file is noticed before it is scored as the same split."""
    digest = hashlib.sha256()
    for batch in ds.iter(batch_size=4096):  # read in batches: row-by-row access is slow on large splits
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            digest.update(json.dumps(dict(zip(columns, values)), sort_keys=True, default=str).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def reload_held_out_split(record: dict[str, Any], load: Callable[[str, Optional[str]], Any]) -> tuple[Any, list]:
    """The exact rows of a recorded split and their ids; raises UsageError if the data changed since training.

    `load(data, data_config)` reads the source the way the run's task reads it.
    """
    source = load(record["source"], record.get("data_config"))
    split = record["eval_split"]
    if split not in source:
        raise UsageError(f"split '{split}' recorded for this run is gone from {record['source']}; "
                         "pass --data/--split to score other data")
    ds = source[split]
    indices = record["indices"]
    if indices and max(indices) >= len(ds):
        raise UsageError(f"{record['source']} has fewer rows than when the run was trained; "
                         "pass --data/--split to score other data")
    rows = take_rows(ds, indices)
    if fingerprint(rows) != record["fingerprint"]:
        raise UsageError(f"the held-out rows of {record['source']} changed since training (fingerprint differs); "
                         "pass --data/--split to score the data as it is now")
    return rows, row_ids(rows, indices)
