"""Two runs side by side: their metrics, and — when both scored the same held-out rows — which rows run B fixed
(A wrong, B right) and which it broke (A right, B wrong), joined by id.

"The same rows" is decided by the runs' split.json records, by the fields that identify held-out rows
(`ftune.data.held_out_differences`: source, config, split, row indices, fingerprint). Ids are row indices when the
data has no id column, so two other datasets share ids: without the same split only the metrics are compared.
"""

from __future__ import annotations

from typing import Any, Optional

from ftune.board.index import BoardError
from ftune.board.rows import MAX_LIMIT, held_out_rows

WHICH = ("fixed", "broken", "both_right", "both_wrong")


def same_rows_why(a, b) -> Optional[str]:
    """None when the runs `a` and `b` (FinishedRuns) scored the same rows; else why not, in one line."""
    from ftune.data import held_out_differences

    if a.task.name != b.task.name:
        return f"the runs are of different tasks ({a.task.name}, {b.task.name}): only their metrics compare"
    for run in (a, b):
        if not run.split:
            return f"run {run.path} has no split.json: its held-out rows are not known, so only metrics compare"
    differences = held_out_differences(b.split, a.split)
    if differences:
        return (f"the runs scored different held-out rows ({'; '.join(differences)}): only their metrics compare, "
                "since ids are row indices that other data shares")
    return None


def comparison(a_run, b_run, a_json: dict, b_json: dict) -> dict[str, Any]:
    """`GET /api/compare`: the runs, whether they share their rows (and why not), metrics, fixed/broken counts."""
    names = list(dict.fromkeys([*a_json["metrics"], *b_json["metrics"]]))
    metrics = {name: [a_json["metrics"].get(name), b_json["metrics"].get(name)] for name in names}
    why = same_rows_why(a_run, b_run)
    counts = None
    if why is None:
        groups = row_groups(a_run, b_run)
        counts = {which: len(ids) for which, ids in groups.items()}
    return {"a": a_json, "b": b_json, "same_rows": why is None, "why": why, "metrics": metrics, "counts": counts}


def row_groups(a_run, b_run) -> dict[str, list]:
    """The ids of the rows both runs scored, grouped by which run got them right, in run A's row order."""
    a_rows = held_out_rows(a_run, a_run.path).rows
    b_wrong = {_key(row["id"]): row["wrong"] for row in held_out_rows(b_run, b_run.path).rows}
    groups: dict[str, list] = {which: [] for which in WHICH}
    for row in a_rows:
        key = _key(row["id"])
        if key not in b_wrong:
            continue
        a_wrong, b_is_wrong = row["wrong"], b_wrong[key]
        which = ("both_wrong" if b_is_wrong else "fixed") if a_wrong else ("broken" if b_is_wrong else "both_right")
        groups[which].append(key)
    return groups


def compared_rows(a_run, b_run, which: str, offset: int, limit: int) -> dict[str, Any]:
    """`GET /api/compare/rows`: one page of the rows in group `which`, with both runs' predictions."""
    if which not in WHICH:
        raise BoardError(400, f"which={which}: use one of {', '.join(WHICH)}", "bad_parameter")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise BoardError(400, f"limit must be 1 to {MAX_LIMIT} and offset 0 or more", "bad_parameter")
    why = same_rows_why(a_run, b_run)
    if why is not None:
        raise BoardError(400, why, "different_rows")
    ids = row_groups(a_run, b_run)[which]
    a_rows = {_key(row["id"]): row for row in held_out_rows(a_run, a_run.path).rows}
    b_rows = {_key(row["id"]): row for row in held_out_rows(b_run, b_run.path).rows}
    page = [{"id": a_rows[key]["id"], "reference": a_rows[key]["reference"],
             "a_prediction": a_rows[key]["prediction"], "b_prediction": b_rows[key]["prediction"],
             "text": a_rows[key]["text"]} for key in ids[offset:offset + limit]]
    return {"which": which, "total": len(ids), "offset": offset, "limit": limit, "rows": page}


def _key(row_id: Any) -> str:
    """Ids as join keys: 3 and "3" name the same row (JSON keeps the type; a CSV source may give either)."""
    return str(row_id)
