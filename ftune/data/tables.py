"""Datasets read and made in Arrow's own code: a column read through a row selection, a column added, rows taken
into a table of their own, rows tokenised (and cached) by `datasets.map`.

The one module that reaches into datasets' internals, where its public API would go row by row in Python: a
dataset's row selection (`_indices`), its fingerprint (`_fingerprint`), and a Dataset made on a table of ftune's own
(`datasets.table`'s InMemoryTable, MemoryMappedTable). tests/test_compat.py names them, so an upgrade that changes
them fails there.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

from ftune.data.memory import InMemoryRows
from ftune.data.sources import quiet_datasets


def tokenize_rows(rows, encode: Callable, config, *, desc: str, **kwargs):
    """`rows.map(encode, batched=True)` dropping the raw columns, on `--preprocessing-workers` processes for large
    data. datasets caches the result under the rows' fingerprint and a hash of `encode` (with the values it
    holds: keep them to the tokenizer and the options that shape the features), so a rerun on the same data,
    tokenizer and options reads the features back instead of tokenising again. Rows held in memory
    (`InMemoryRows`) are encoded as one batch, their features held in memory too."""
    if isinstance(rows, InMemoryRows):
        indices = [list(range(len(rows)))] if kwargs.get("with_indices") else []
        return InMemoryRows(dict(encode(rows[:], *indices)))
    workers = getattr(config, "preprocessing_workers", 1) or 1
    num_proc = workers if workers > 1 and len(rows) >= 1000 * workers else None
    if not rows.cache_files and "new_fingerprint" not in kwargs:
        # Rows held in memory (ftune predict's, a served request's) are never cached, so hashing `encode` (with
        # its tokenizer: tens of milliseconds for a real vocabulary) would buy nothing on every call.
        kwargs["new_fingerprint"] = derived_fingerprint(rows, "tokenize_rows", desc)
    return rows.map(encode, batched=True, remove_columns=rows.column_names, desc=desc, num_proc=num_proc, **kwargs)


def arrow_column(ds, column: str):
    """A column of `ds` as an Arrow array, read in Arrow's own code even through a row selection (datasets gathers
    the rows of a selection one by one in Python)."""
    values = ds.data.column(column)
    indices = getattr(ds, "_indices", None)
    return values.take(indices.column(0)) if indices is not None else values


def column_list(ds, column: str) -> list[Any]:
    """A column's values as a Python list, read column-wise (datasets' own `ds[column]` iterates row by row);
    values stored encoded (e.g. a column of mixed types, kept as JSON text) are decoded as datasets would. Rows held
    in memory (`InMemoryRows`) give their own list."""
    if isinstance(ds, InMemoryRows):
        return list(ds[column])
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
