"""Everything ftune prints goes through this module.

Streams: stdout carries what a command reports (its progress, its final table, its results); stderr carries the
`note: ...`, `warning: ...` and `error: ...` lines. Only the main process (rank 0 of a multi-process run) reports
progress, so a 2-rank run prints each line once.

How a command reports is set once per command by the CLI's error boundary (`session`):
- text (the default): on a terminal (stdout and stderr both one), one progress bar per phase (`Phase`: tokenising,
  training, evaluating, generating), with the lines of the run printed above the bars; anywhere else plain lines,
  without bars or escape codes, so logs and pipes stay readable.
- quiet (`--quiet`): only errors, warnings and the command's final table (`final`).
- json (`--log-format json`): one JSON object per event on stdout and nothing else there — a stray print of a
  library goes to stderr while the command runs. Errors stay one `error:` line on stderr.

The kinds of output:
- `info`: a line of what is happening (JSON: a "message" event); `event`: something that happened, with fields
  for scripts (JSON: the event itself); `detail`: a text block for people only (per-class tables);
- `final`: the command's final table, shown even with --quiet (JSON: the "end" event);
- `result`/`result_rows`: a command's own output (generated text, prediction rows), on stdout in every mode;
- `note`, `warn`, `error`: one line each on stderr (JSON: note and warning are events).

The table helpers format only; they print nothing themselves.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

from ftune.distributed import is_main_process

LOG_FORMATS = ("text", "json")


@dataclass
class _Settings:
    quiet: bool = False
    log_format: str = "text"
    events_out: Any = None      # the real stdout while a JSON session sends stray prints to stderr


_settings = _Settings()


@contextlib.contextmanager
def session(*, quiet: bool = False, log_format: str = "text") -> Iterator[None]:
    """How one command reports (see the module docstring); restores the previous way when the command ends."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    previous = (_settings.quiet, _settings.log_format, _settings.events_out)
    real_stdout = sys.stdout
    _settings.quiet, _settings.log_format = quiet, log_format
    if log_format == "json":
        _settings.events_out = real_stdout
        sys.stdout = sys.stderr  # stdout holds only events: anything else printed goes to stderr
    try:
        yield
    finally:
        close_bars()
        if log_format == "json":
            sys.stdout = real_stdout
        _settings.quiet, _settings.log_format, _settings.events_out = previous


def command_line_flags() -> list[str]:
    """The flags that make another ftune process report as this one does (for the ranks of a multi-process run)."""
    return ["--quiet"] * _settings.quiet + (["--log-format", "json"] if _json_mode() else [])


def _json_mode() -> bool:
    return _settings.log_format == "json"


def _stdout():
    return _settings.events_out or sys.stdout


def _print(text: str) -> None:
    out = _stdout()
    out.write(text + "\n")
    out.flush()


def _emit(event: str, fields: dict[str, Any]) -> None:
    record = {"event": event, "time": round(time.time(), 3), **fields}
    _print(json.dumps(record, ensure_ascii=False, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return str(value)


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: a non-finite figure becomes null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {k: clean(v) for k, v in fields.items()}


# --------------------------------------------------------------------------------------------------
# What commands report


def info(text: str = "") -> None:
    """A line of what is happening (rank 0 only; not with --quiet; a "message" event in JSON)."""
    if not is_main_process():
        return
    if _json_mode():
        if text:
            _emit("message", {"text": text})
    elif not _settings.quiet:
        _print(text)


def event(name: str, text: Optional[str] = None, **fields: Any) -> None:
    """Something that happened, e.g. a run's start or an evaluation: `text` for people (not with --quiet), the
    fields for scripts (the JSON event `name`). Rank 0 only."""
    if not is_main_process():
        return
    if _json_mode():
        _emit(name, _clean(fields))
    elif text is not None and not _settings.quiet:
        _print(text)


def detail(text: str) -> None:
    """A text block for people (e.g. a per-class table): not with --quiet, not in JSON, where the files hold it."""
    if is_main_process() and not _json_mode() and not _settings.quiet:
        _print(text)


def final(table: str, *, details: Optional[str] = None, closing: Optional[str] = None, **fields: Any) -> None:
    """The command's final table, shown with --quiet too, then `details` and a `closing` line (not with --quiet).
    In JSON the "end" event with `fields` instead."""
    if not is_main_process():
        return
    close_bars()
    if _json_mode():
        _emit("end", _clean(fields))
        return
    _print(table)
    if not _settings.quiet:
        for text in (details, closing):
            if text:
                _print(text)


def note(text: str) -> None:
    """Something the user should know that is not a failure, e.g. how many inputs were truncated."""
    if not is_main_process():
        return
    if _json_mode():
        _emit("note", {"message": text})
    elif not _settings.quiet:
        print(f"note: {text}", file=sys.stderr, flush=True)


def warn(text: str) -> None:
    """A problem that does not stop the command (rank 0 only); shown with --quiet too."""
    if not is_main_process():
        return
    if _json_mode():
        _emit("warning", {"message": text})
    else:
        print(f"warning: {text}", file=sys.stderr, flush=True)


def error(text: str) -> None:
    """The one line a failed command prints, on stderr in every mode."""
    close_bars()
    print(f"error: {text}", file=sys.stderr, flush=True)


def result(text: str) -> None:
    """Command output proper (not progress): printed on every call."""
    out = _stdout()
    out.write(text if text.endswith("\n") else text + "\n")
    out.flush()


def result_part(text: str, *, end: bool = False) -> None:
    """A piece of command output as it arrives (streamed generation); `end` closes its line."""
    out = _stdout()
    out.write(text + ("\n" if end else ""))
    out.flush()


def result_rows(rows: Iterable[dict[str, Any]]) -> None:
    """Rows of output as JSON lines on stdout."""
    out = _stdout()
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    out.flush()


def stdout_isatty() -> bool:
    return _isatty(_stdout())


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# Phases and their bars


def bars_enabled() -> bool:
    """Bars only for a person at a terminal: text mode, not quiet, rank 0, stdout and stderr both a terminal."""
    return (not _json_mode() and not _settings.quiet and is_main_process() and _isatty(sys.stdout)
            and _isatty(sys.stderr) and os.environ.get("TERM") != "dumb")


class Phase:
    """One phase of a command (tokenising, training, evaluating, generating ...) over `total` units.

    On a terminal it is a bar (with `stats`, e.g. the loss, beside it); a phase opened inside another one (an
    evaluation during training) is a second bar that goes away when it ends, while the outer bar stays on screen
    as the phase's record. Without bars, a phase with `summary` reports one line (JSON: a "phase" event) when it
    ends; `log` lines stand in for the bar (JSON: events).
    """

    def __init__(self, name: str, total: Optional[int], unit: str, *, completed: int = 0, summary: bool = True):
        self.name, self.total, self.unit, self.summary = name, total, unit, summary
        self.completed = completed
        self.started = time.monotonic()
        self.closed = False
        self.bar = _display.open(self) if bars_enabled() else None

    def advance(self, amount: int = 1) -> None:
        self.update(completed=self.completed + amount)

    def update(self, *, completed: Optional[int] = None, stats: Optional[str] = None) -> None:
        if completed is not None:
            self.completed = completed
        if self.bar is not None:
            _display.update(self, stats)

    def log(self, name: str, text: str, stats: Optional[str] = None, **fields: Any) -> None:
        """A progress record: beside the bar on a terminal (`stats`), else a line (`text`) or a JSON event."""
        if self.bar is not None:
            if stats is not None:
                self.update(stats=stats)
            return
        event(name, text, **fields)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def close(self, text: Optional[str] = None, **fields: Any) -> None:
        """End the phase; `text` is its summary line where there is no bar (and `fields` its JSON event)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            _display.close(self)
        elif self.summary:
            default = f"{self.name}: {self.completed:,} {self.unit} in {format_seconds(self.seconds)}"
            event("phase", text or default, phase=self.name, completed=self.completed, total=self.total,
                  unit=self.unit, seconds=round(self.seconds, 2), **fields)

    def __enter__(self) -> "Phase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def phase(name: str, total: Optional[int], unit: str, **kwargs: Any) -> Phase:
    """A `Phase` to use as a context manager: `with console.phase("tokenising", n, "rows") as p: ...`."""
    return Phase(name, total, unit, **kwargs)


class _Display:
    """The bars on screen: one rich Progress while any phase is open, one row per open phase. Lines printed while
    it is live appear above the bars (rich redirects stdout and stderr), so nothing is torn."""

    def __init__(self):
        self.progress = None
        self.open_phases: list[Phase] = []

    def open(self, phase: Phase):
        if self.progress is None:
            self.progress = self._start()
        self.open_phases.append(phase)
        return self.progress.add_task(phase.name, total=phase.total, completed=phase.completed, unit=phase.unit,
                                      stats="")

    def update(self, phase: Phase, stats: Optional[str]) -> None:
        if self.progress is None or phase not in self.open_phases:
            return
        extra = {"stats": f" {stats} " if stats else ""} if stats is not None else {}
        self.progress.update(phase.bar, completed=phase.completed, **extra)

    def close(self, phase: Phase) -> None:
        if self.progress is None or phase not in self.open_phases:
            return
        self.open_phases.remove(phase)
        if self.open_phases:
            self.progress.remove_task(phase.bar)  # an inner phase: its line or the outer bar tells what it did
            return
        self.progress.update(phase.bar, completed=phase.completed)
        self.stop()  # the last bar stays on screen as it ended

    def stop(self) -> None:
        if self.progress is not None:
            progress, self.progress = self.progress, None
            self.open_phases.clear()
            progress.stop()

    @staticmethod
    def _start():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description:<11}"), BarColumn(bar_width=28), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            TextColumn("<"), TimeRemainingColumn(),
            console=Console(file=sys.stdout), refresh_per_second=4,
        )
        progress.start()
        return progress


_display = _Display()


def close_bars() -> None:
    """Take every bar off the screen's live area (before an error line, at the end of a command)."""
    _display.stop()


# --------------------------------------------------------------------------------------------------
# Formatting


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_seconds(seconds: Optional[float]) -> str:
    """12.3 -> "12.3s", 75 -> "1m15s", 3725 -> "1h02m"."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


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
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    out.append(line)
    for row in rows:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
