"""What ftune prints: plain lines and aligned tables, on stdout."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def echo(text: str = "") -> None:
    print(text, flush=True)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(metrics: dict[str, Any], title: str = "metrics") -> str:
    """Scalar metrics as a two-column table."""
    rows = [(k, format_value(v)) for k, v in metrics.items() if isinstance(v, (int, float))]
    return table(["metric", "value"], rows, title=title)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
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
