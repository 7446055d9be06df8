"""The held-out split: named, detected or carved (seeded, stratified), and the record in the run's split.json.

The record holds the split's source, how it was made, the row indices it took from its source split and a
fingerprint of those rows, so `ftune eval RUN` scores the same rows, or says that the data changed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ftune.config import MIN_TRAIN_ROWS
from ftune.data.rows import RowNames, row_ids, row_names
from ftune.data.tables import take_rows
from ftune.errors import UsageError

EVAL_SPLIT_NAMES = ("validation", "valid", "dev", "val", "test")


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
    if Path(data).exists():  # a local path as given may be relative: where it was, for commands run elsewhere
        record["source_path"] = str(Path(data).resolve())
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


# The JSON of a row as `json.dumps(row, sort_keys=True, default=str)` writes it, without building an encoder per row.
_ROW_JSON = json.JSONEncoder(sort_keys=True, default=str).encode


def fingerprint(ds) -> str:
    """SHA-256 over the rows' JSON, a line each, so a changed data file is noticed before it is scored as the same
    split."""
    digest = hashlib.sha256()
    for batch in ds.iter(batch_size=4096):  # read in batches: row-by-row access is slow on large splits
        columns = list(batch)
        lines = "".join(_ROW_JSON(dict(zip(columns, values))) + "\n" for values in zip(*(batch[c] for c in columns)))
        digest.update(lines.encode())
    return digest.hexdigest()


def held_out_source(record: dict[str, Any]) -> str:
    """Where a split.json record's rows are read from: the local path the run was trained on, wherever the command
    runs, else the source as given (a Hub id, or a run recorded before `source_path`)."""
    where = record.get("source_path")
    return where if where and Path(where).exists() else record["source"]


def reload_held_out_split(record: dict[str, Any], load: Callable[[str, Optional[str]], Any]) -> tuple[Any, list]:
    """The exact rows of a recorded split and their ids; raises UsageError if the data changed since training.

    `load(data, data_config)` reads the source (`held_out_source`) the way the run's task reads it.
    """
    source = load(held_out_source(record), record.get("data_config"))
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
