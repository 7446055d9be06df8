"""The data layouts of `ftune translate` that ftune.data does not read itself: the Hub layout's translation dicts
(checked here), and .tsv files of sentence pairs (read here: ftune.data would read them as a CSV table)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ftune.data import check_no_missing, files_by_split
from ftune.errors import UsageError

TRANSLATION_COLUMN = "translation"


def check_translation_dicts(rows, source_lang: str, target_lang: str, where: str, ids: Optional[list] = None) -> None:
    """UsageError when the translation dicts lack a language or a row has no text in one."""
    feature = rows.features[TRANSLATION_COLUMN]
    languages = list(feature) if isinstance(feature, dict) else list(getattr(feature, "languages", []) or [])
    for code, flag in ((source_lang, "--source-lang"), (target_lang, "--target-lang")):
        if code not in languages:
            raise UsageError(f"unknown language code '{code}' ({flag}): the {TRANSLATION_COLUMN} dicts of {where} "
                             f"hold {', '.join(languages) or 'no languages'}")
    flat = rows.select_columns([TRANSLATION_COLUMN]).flatten()
    check_no_missing(flat, [f"{TRANSLATION_COLUMN}.{source_lang}", f"{TRANSLATION_COLUMN}.{target_lang}"], where,
                     ids=ids)


def load_tsv_pairs(data: Optional[str], header_names: set[str]):
    """A DatasetDict from .tsv files of sentence pairs (a file, or a folder of train/dev/test .tsv files); None
    for other data.

    Lines are split at tabs only (quotes are text, not CSV quoting). The first line is a header when its first
    two fields are `header_names` (the --source-column/--target-column or language codes given) or
    source/target (src/tgt); then the columns are named by it. Otherwise the file has no header: every line is
    a pair, the first field the source, the second the target (columns `source` and `target`; further fields
    are ignored). Blank lines are skipped.
    """
    if not data:
        return None
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".tsv":
            return None
        groups = {"train": [path]}
    elif path.is_dir() and not (path / "dataset_dict.json").is_file():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in
                       (".tsv", ".csv", ".json", ".jsonl", ".parquet", ".txt"))
        if not files or any(f.suffix.lower() != ".tsv" for f in files):
            return None
        groups = files_by_split(files)
    else:
        return None
    from ftune.data import quiet_datasets

    datasets = quiet_datasets()

    splits = {}
    for split, files in groups.items():
        tables = [read_tsv_pairs(file, header_names) for file in files]
        if len({tuple(t) for t in tables}) > 1:
            raise UsageError(f"{data}: the files of split '{split}' have different columns; give them one header")
        splits[split] = datasets.Dataset.from_dict({k: [v for t in tables for v in t[k]] for k in tables[0]})
        if len(splits[split]) == 0:
            raise UsageError(f"{data}: split '{split}' has no pairs; give lines of source<TAB>target")
    return datasets.DatasetDict(splits)


def read_tsv_pairs(file: Path, header_names: set[str]) -> dict[str, list[str]]:
    """The columns of one pair file (see `load_tsv_pairs`)."""
    with file.open(encoding="utf-8", errors="replace") as handle:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, 1) if line.strip()]
    if not lines:
        return {"source": [], "target": []}
    first = [field.strip() for field in lines[0][1].split("\t")]
    known = [{"source", "target"}, {"src", "tgt"}, header_names]
    has_header = len(first) >= 2 and any(len(names) >= 2 and set(first[:2]) <= names for names in known)
    names = first if has_header else ["source", "target"]
    columns: dict[str, list[str]] = {name: [] for name in names}
    for number, line in lines[1:] if has_header else lines:
        fields = line.split("\t")
        if len(fields) < 2 or (has_header and len(fields) != len(names)):
            want = f"{len(names)} tab-separated fields as its header" if has_header else "a source<TAB>target pair"
            raise UsageError(f"{file} line {number} has {len(fields)} field(s); each line must hold {want}")
        for name, value in zip(names, fields):
            columns[name].append(value)
    return columns
