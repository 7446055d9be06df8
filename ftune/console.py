"""Everything ftune prints goes through this module.

- `info`: what a run tells its user (progress, metrics tables), on stdout, from the main process only (rank 0 of
  a multi-process run), so a 2-rank run prints each line once.
- `result`: a command's own output (a generated text, prediction rows as JSON lines), on stdout.
- `note`, `warn` and `error`: one line each on stderr — `note: ...` (worth knowing, e.g. how many inputs were
  truncated), `warning: ...` and `error: ...` — so stdout stays clean for results.

The table helpers format only; they print nothing themselves.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from ftune.distributed import is_main_process


def info(text: str = "") -> None:
    """A line of what is happening (rank 0 only)."""
    if is_main_process():
        print(text, flush=True)


def note(text: str) -> None:
    """Something the user should know that is not a failure, e.g. how many inputs were truncated."""
    if is_main_process():
        print(f"note: {text}", file=sys.stderr, flush=True)


def warn(text: str) -> None:
    """A problem that does not stop the command (rank 0 only)."""
    if is_main_process():
        print(f"warning: {text}", file=sys.stderr, flush=True)


def error(text: str) -> None:
    """The one line a failed command prints."""
    print(f"error: {text}", file=sys.stderr, flush=True)


def result(text: str) -> None:
    """Command output proper (not progress): printed on every call."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def result_rows(rows: Iterable[dict[str, Any]]) -> None:
    """Rows of output as JSON lines on stdout."""
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def stdout_isatty() -> bool:
    return sys.stdout.isatty()


# --------------------------------------------------------------------------------------------------
# Formatting


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(metrics: dict[str, Any], title: str = "metrics") -> str:
    """Scalar metrics as a two-column table."""
    rows = [(k, format_value(v)) for k, v in metrics.items() if isinstance(v, (int, float))]
    return table(["metric", "value"], rows, title=title)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    """Aligned columns; numbers right-aligned."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    out.append(line)
    for row in rows:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(out)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
