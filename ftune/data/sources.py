"""Reading `--data`: a file, a folder of split files, a save_to_disk folder or a Hub dataset, as a DatasetDict.

A malformed file is one line naming the file and its first bad line (not UTF-8, not JSON, no rows), raised before
anything is written. Which split a file holds is said by its name (`split_of`): the one rule every data layout
uses, the tasks' own (CoNLL, SQuAD JSON, TSV pairs) included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

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


def split_of(file: Path) -> str:
    """The split a data file's name says it holds: train.csv, validation.jsonl, test-00000.parquet, dev.tsv (an alias
    of validation), train.part2.conll ... The one rule for every layout read from a folder of files."""
    stem = file.stem.lower().split("-")[0].split(".")[0]
    return SPLIT_ALIASES.get(stem, stem)


def files_by_split(files: Iterable[Path]) -> dict[str, list[Path]]:
    """`files` grouped by the split each one's name says it holds (`split_of`), in their order."""
    groups: dict[str, list[Path]] = {}
    for file in files:
        groups.setdefault(split_of(file), []).append(file)
    return groups


def _split_files(folder: Path) -> dict[str, list[Path]]:
    """A folder's data files grouped by split."""
    groups = files_by_split(f for f in sorted(folder.iterdir()) if f.suffix.lower() in FILE_READERS and f.is_file())
    if not groups:
        known = ", ".join(FILE_READERS)
        raise UsageError(f"folder {folder} holds no data files ({known}); put e.g. train.csv and test.csv in it")
    return groups


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
