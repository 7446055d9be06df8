"""Data: loading any source, finding and checking columns, naming rows, and making (and recording) the held-out split.

- `sources`: `--data` read as a DatasetDict (a file, a folder of split files, a save_to_disk folder, a Hub id) and
  the rule that names a file's split;
- `columns`: which column plays which role, and what the columns hold (text, a value in every row);
- `rows`: the ids of rows in eval_predictions.jsonl and how messages name rows (ids, lines of a file, positions);
- `tables`: datasets read and made in Arrow's own code (the one module that touches datasets' internals);
- `memory`: rows held in memory by column (a predict call's rows and features), read as a Dataset is;
- `split`: the held-out split and its record in the run's `split.json`, so `ftune eval RUN` scores the same rows.

The names the rest of ftune uses are importable from `ftune.data` itself.
"""

from ftune.data.columns import (
    check_no_missing,
    check_split_filled,
    check_split_text,
    check_text_columns,
    missing_rows,
    pick_column,
)
from ftune.data.memory import InMemoryRows
from ftune.data.rows import ID_COLUMNS, RowNames, describe_row_groups, describe_rows, quoted, row_ids, row_names
from ftune.data.sources import FILE_READERS, files_by_split, load_source, quiet_datasets, require_regular, split_of
from ftune.data.split import (
    EVAL_SPLIT_NAMES,
    HELD_OUT_FIELDS,
    HeldOutSplit,
    build_held_out_split,
    carve_indices,
    fingerprint,
    held_out_differences,
    held_out_source,
    reload_held_out_split,
)
from ftune.data.tables import arrow_column, column_list, derived_fingerprint, take_rows, tokenize_rows, with_column

__all__ = [
    "EVAL_SPLIT_NAMES", "FILE_READERS", "HELD_OUT_FIELDS", "ID_COLUMNS", "HeldOutSplit", "InMemoryRows", "RowNames",
    "arrow_column", "build_held_out_split", "carve_indices", "check_no_missing", "check_split_filled", "check_split_text",
    "check_text_columns", "column_list", "derived_fingerprint", "describe_row_groups", "describe_rows",
    "files_by_split", "fingerprint", "held_out_differences", "held_out_source", "load_source", "missing_rows", "pick_column",
    "quiet_datasets", "quoted", "reload_held_out_split", "require_regular", "row_ids", "row_names", "split_of",
    "take_rows", "tokenize_rows", "with_column",
]
