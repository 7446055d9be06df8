"""The search space of a sweep: `--param KEY=SPEC`, or a recipe's `sweep: params:` mapping.

KEY is a training option by its flag name (`lr`, `batch-size`, `lora-r` ...); SPEC is one of

    1e-5..1e-3:log     a float range, sampled on a log scale
    0.0..0.2           a float range
    4..32:int          a whole-number range (`:int:log` for a log scale); ranges of integer options are whole
    8,16,32            a list of choices (in a recipe also a YAML list), at least two different values

Every value a parameter can take is checked against its option (type, minimum, choices) before anything runs.
The Optuna parameter names are the flag names, so `study.db`, `trials.jsonl` and the table speak the flags.
This module imports no Optuna until a parameter is sampled.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass
from typing import Any, Optional

from ftune.config import coerce, config_fields
from ftune.errors import UsageError

# Options a sweep may not search, and why.
NOT_SEARCHABLE = {
    **dict.fromkeys(("data", "data_config", "train_split", "eval_split", "val_fraction", "max_eval_samples",
                     "split_seed"), "it decides the held-out rows, which every trial shares"),
    "output_dir": "each trial writes its own folder inside the sweep's --output-dir",
    **dict.fromkeys(("num_processes", "accelerate_config"), "each trial runs as one process; use --jobs to run "
                                                             "trials side by side"),
}
MODIFIERS = ("int", "log")


@dataclass(frozen=True)
class Param:
    """One searched option: a range (low..high, whole numbers or not, log scale or not) or a list of choices."""

    key: str                                # the flag name without dashes, e.g. "batch-size"
    field: str                              # the config field, e.g. "batch_size"
    low: Optional[float] = None
    high: Optional[float] = None
    integer: bool = False
    log: bool = False
    choices: Optional[tuple[Any, ...]] = None

    @property
    def spec(self) -> str:
        """The SPEC, written out the same way however it was given (recorded in sweep.yaml and the study)."""
        if self.choices is not None:
            return ",".join(format_value(c) for c in self.choices)
        bounds = f"{self.low:g}..{self.high:g}" if not self.integer else f"{int(self.low)}..{int(self.high)}"
        return bounds + ":int" * self.integer + ":log" * self.log

    def values_to_check(self) -> list[Any]:
        """The values whose configurations are checked before the sweep starts: each choice, or both ends."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]


def format_value(value: Any) -> str:
    """A parameter value as people read it: 4 significant digits for floats."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def describe(params: dict[str, Any]) -> str:
    """`lr=0.0003 epochs=2`"""
    return " ".join(f"{key}={format_value(value)}" for key, value in params.items())


def parse_param_flags(items: list[str]) -> dict[str, str]:
    """`--param KEY=SPEC` items as a mapping; raises UsageError for an item without `=` or a key given twice."""
    found: dict[str, str] = {}
    for item in items:
        key, sep, spec = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not spec.strip():
            raise UsageError(f"--param expects KEY=SPEC (e.g. lr=1e-5..1e-3:log, batch-size=8,16,32), got '{item}'")
        if key in found:
            raise UsageError(f"--param {key} is given twice; give each option one SPEC")
        found[key] = spec.strip()
    return found


def build_space(options_class, given: dict[str, Any]) -> list[Param]:
    """The parameters of `given` (KEY -> SPEC text or list) for a task's options; raises UsageError listing every
    problem at once."""
    fields = {f.name: (f, tp) for f, tp in config_fields(options_class)}
    params, problems = [], []
    for key, raw in given.items():
        name = str(key).strip().lstrip("-").replace("-", "_")
        flag = name.replace("_", "-")
        try:
            if name not in fields:
                raise ValueError(f"no option --{flag}{_suggest(name, fields)}")
            if name in NOT_SEARCHABLE:
                raise ValueError(f"--{flag} cannot be searched: {NOT_SEARCHABLE[name]}")
            params.append(_parse(flag, name, raw, *fields[name]))
        except ValueError as exc:
            problems.append(f"--param {flag}={_shown(raw)}: {exc}")
    if problems:
        raise UsageError("invalid search space: " + "; ".join(problems))
    if not params:
        raise UsageError("nothing to search: give at least one --param KEY=SPEC (e.g. --param lr=1e-5..1e-3:log), "
                         "or a `sweep: params:` section in the --config recipe")
    return params


def grid_points(params: list[Param]) -> list[dict[str, Any]]:
    """Every combination of the choices, in the order they were listed (the first parameter varies slowest)."""
    return [dict(zip((p.key for p in params), values)) for values in itertools.product(*(p.choices for p in params))]


def _parse(flag: str, name: str, raw: Any, field: dataclasses.Field, tp: Any) -> Param:
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    if typing.get_origin(base) is list:
        raise ValueError(f"--{flag} takes a list, which cannot be searched")
    if isinstance(raw, (list, tuple)):
        return _choices(flag, name, list(raw), tp, field.metadata)
    if isinstance(raw, bool) or not isinstance(raw, str):
        raise ValueError(f"a single value is not a search: give a range LOW..HIGH or two or more choices (to fix "
                         f"it, pass --{flag} {_shown(raw)})")
    text = raw.strip()
    if ".." in text:
        return _range(flag, name, text, tp, base, field.metadata)
    if "," in text:
        return _choices(flag, name, [item.strip() for item in text.split(",")], tp, field.metadata)
    raise ValueError(f"'{text}' is neither a range LOW..HIGH[:int][:log] nor a list A,B,...; to fix --{flag} at one "
                     f"value pass --{flag} {text}")


def _range(flag: str, name: str, text: str, tp: Any, base: Any, meta) -> Param:
    low_text, _, rest = text.partition("..")
    high_text, *modifiers = rest.split(":")
    unknown = [m for m in modifiers if m not in MODIFIERS]
    if unknown or len(set(modifiers)) != len(modifiers):
        raise ValueError(f"unknown modifier ':{(unknown or modifiers)[0]}' (a range takes :int and :log, once each)")
    if base not in (int, float):
        raise ValueError(f"--{flag} takes {'true/false' if base is bool else 'text'}: give a list of choices, "
                         "not a range")
    low, high = _number(low_text, text), _number(high_text, text)
    integer = "int" in modifiers or base is int
    if integer and not (low.is_integer() and high.is_integer()):
        raise ValueError(f"--{flag} takes whole numbers: give whole-number ends")
    if low >= high:
        raise ValueError(f"empty or reversed range {low:g}..{high:g}: write LOW..HIGH with LOW below HIGH")
    log = "log" in modifiers
    if log and low <= 0:
        raise ValueError(f"a :log range needs ends above 0, got {low:g}")
    for end in (low, high):
        coerce(int(end) if integer else end, tp, meta)  # the option's own checks: minimum, maximum
    return Param(key=flag, field=name, low=low, high=high, integer=integer, log=log)


def _choices(flag: str, name: str, items: list[Any], tp: Any, meta) -> Param:
    if any(isinstance(item, str) and not item for item in items):
        raise ValueError("an empty choice: write the choices as A,B,C")
    values = [coerce(item, tp, meta) for item in items]
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise ValueError(f"lists {format_value(repeated[0])} twice")
    if len(values) < 2:
        raise ValueError(f"a list of choices needs at least two values (to fix --{flag}, pass --{flag} "
                         f"{format_value(values[0]) if values else 'VALUE'})")
    return Param(key=flag, field=name, choices=tuple(values))


def _number(text: str, spec: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"malformed range '{spec}': write LOW..HIGH with numbers, e.g. 1e-5..1e-3:log") from None
    if not math.isfinite(value):
        raise ValueError(f"malformed range '{spec}': the ends must be finite numbers")
    return value


def _shown(raw: Any) -> str:
    return ",".join(map(str, raw)) if isinstance(raw, (list, tuple)) else str(raw)


def _suggest(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, [k for k in known if k not in NOT_SEARCHABLE], n=1)
    return f" (did you mean '{close[0].replace('_', '-')}'?)" if close else ""
