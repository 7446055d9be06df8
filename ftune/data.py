"""Loading data from any source, finding columns, and making (and recording) the held-out split.

The held-out split is recorded in the run's `split.json` — source, how it was made, the row indices it
took from its source split and a fingerprint of those rows — so `ftune eval RUN` scores the same rows.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

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
    data_files = {split: [str(f) for f in files] for split, files in groups.items()}
    try:
        loaded = datasets.load_dataset(builder, data_files=data_files, **extra)
    except Exception as exc:  # the readers raise many types (pandas, pyarrow, json) for a malformed file
        detail = " ".join(str(exc).split())[:300]
        if "corresponds to no data" in detail or isinstance(exc, datasets.exceptions.DatasetGenerationError) and \
                all(f.stat().st_size == 0 for files in groups.values() for f in files):
            raise UsageError(f"{data} has no rows; give data with at least one example") from None
        raise UsageError(f"could not read {data}: {detail}; fix the malformed rows or convert the file") from None
    for split, ds in loaded.items():
        if len(ds) == 0:
            raise UsageError(f"{data}: split '{split}' has no rows; give data with at least one example")
    return loaded


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


def check_no_missing(ds, columns: Iterable[str], where: str, ids: Optional[list] = None) -> None:
    """Raise if any row has no value in one of `columns` (null, or blank text), naming the first such rows.

    The check runs on the Arrow columns, not row by row. Rows are named by `ids` (the data's own ids or row
    numbers) when given, else by their position in `ds`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = ds.with_format("arrow")
    for column in columns:
        values = arrow[column]
        missing = pc.is_null(values)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            blank = pc.equal(pc.utf8_trim_whitespace(values), "")
            missing = pc.or_(missing, pc.fill_null(blank, True))
        bad = pc.indices_nonzero(missing).to_pylist()
        if bad:
            named = [ids[i] for i in bad[:5]] if ids is not None else bad[:5]
            shown = ", ".join(str(i) for i in named) + (" ..." if len(bad) > 5 else "")
            raise UsageError(f"{len(bad)} row(s) of {where} have no value in column '{column}' (rows {shown}); "
                             f"fill or remove them")


def row_ids(rows, positions: Iterable[int]) -> list[Any]:
    """What names each row in eval_predictions.jsonl: the data's own id column (id, idx, guid) when it has one,
    else the row's 0-based index in its source split (`positions`, as recorded in split.json)."""
    for name in ID_COLUMNS:
        if name in rows.column_names:
            return list(rows[name])
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
    train_indices: list[int] = field(default_factory=list)

    @property
    def train_ids(self) -> list[Any]:
        """What names each training row in messages: its id, or its index in the source split."""
        return row_ids(self.train, self.train_indices)


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
        train_indices = list(range(len(train_full)))
        eval_source = source[eval_split]
        eval_indices = list(range(len(eval_source)))
        method = {"method": "split", "eval_split": eval_split}
    else:
        labels = stratify(train_full) if stratify else None
        train_indices, eval_indices = carve_indices(len(train_full), val_fraction, seed, labels)
        eval_source = train_full
        method = {"method": "fraction", "eval_split": train_split, "val_fraction": val_fraction, "seed": seed,
                  "stratified": labels is not None}
    if max_train_samples is not None:
        train_indices = train_indices[:max_train_samples]
    if max_eval_samples is not None:
        eval_indices = eval_indices[:max_eval_samples]
    if not eval_indices:
        raise UsageError(f"the held-out split of {data} is empty; raise --val-fraction or give an eval split")
    if not train_indices:
        raise UsageError(f"no training rows are left in {data} after holding out; lower --val-fraction")

    eval_rows = eval_source.select(eval_indices)
    record = {"source": data, "data_config": data_config, "train_split": train_split, **method,
              "train_rows": len(train_indices), "rows": len(eval_indices), "fingerprint": fingerprint(eval_rows),
              "indices": eval_indices}
    return HeldOutSplit(train=train_full.select(train_indices), eval=eval_rows,
                        eval_ids=row_ids(eval_rows, eval_indices), record=record, train_indices=train_indices)


def carve_indices(n: int, fraction: float, seed: int, labels: Optional[list] = None) -> tuple[list[int], list[int]]:
    """Seeded split of range(n) into (train, eval); with labels, each class gives its share to eval."""
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
    held = set(eval_indices)
    return [i for i in range(n) if i not in held], sorted(eval_indices)


def fingerprint(ds) -> str:
    """SHA-256 over the rows' JSON, so a changed data file is noticed before it is scored as the same split."""
    digest = hashlib.sha256()
    for row in ds:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
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
    rows = ds.select(indices)
    if fingerprint(rows) != record["fingerprint"]:
        raise UsageError(f"the held-out rows of {record['source']} changed since training (fingerprint differs); "
                         "pass --data/--split to score the data as it is now")
    return rows, row_ids(rows, indices)
