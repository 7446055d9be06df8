"""A run's task state: what `Task.prepare_state` derived from the data and the model (the columns by role, the
labels, the language codes ...), one typed dataclass per task (`Task.state_class`), which every task method reads.

It is saved under `run: state:` in ftune.yaml (`to_dict`: the fields in order, as plain YAML values) and read back
from there (`from_dict`) by `ftune.rundir.open_run`, and by `--resume`, which compares it with the state the data
gives now. A field made with `saved_when_set` is left out of the file while it is None (classify's class weights,
translate's language settings). Reading, a key the run lacks takes the field's default where it has one (a run
written before the field existed), and a key no field names is passed over (one that ftune no longer derives); a
missing field without a default, or a value of another type, is an error: the file was changed after training.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


def saved_when_set(default: Any = None):
    """A state field that ftune.yaml holds only while it is set (not None)."""
    return field(default=default, metadata={"saved_when_set": True})


@dataclass(frozen=True, kw_only=True)
class TaskState:
    """What every task's run derives: the data's column for each of the task's roles (None: a role not used)."""

    columns: dict[str, Optional[str]]

    def to_dict(self) -> dict[str, Any]:
        """The state as ftune.yaml holds it: each field by name, in order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.metadata.get("saved_when_set") and getattr(self, f.name) is None)}

    @classmethod
    def from_dict(cls, saved: Any) -> "TaskState":
        """The state saved in ftune.yaml; ValueError saying what is missing or of the wrong type."""
        if not isinstance(saved, dict):
            raise ValueError(f"the state is {type(saved).__name__}, not a mapping of names to values")
        problems, values = [], {}
        for f, tp in _field_types(cls):
            if f.name not in saved:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    problems.append(f"no {f.name}")
                continue
            try:
                values[f.name] = _read(saved[f.name], tp)
            except ValueError as exc:
                problems.append(f"{f.name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**values)

    def differences(self, other: "TaskState") -> list[tuple[str, Any, Any]]:
        """(field, this value, the other's value) for each field in which `other` (a state of the same task)
        differs."""
        return [(f.name, getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]


@functools.cache
def _field_types(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


def _read(value: Any, tp: Any) -> Any:
    """`value`, as YAML gave it, checked against the type `tp` (numbers where floats are wanted made floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _read(value, next(a for a in args if a is not type(None)))
    if origin is list and isinstance(value, list):
        return [_read(item, args[0]) for item in value]
    if origin is dict and isinstance(value, dict):
        return {_read(k, args[0]): _read(v, args[1]) for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (str, bool) and isinstance(value, tp):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not {_described(tp)}")


def _described(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_described(a) for a in args)
    if origin is list:
        return f"a list of {_described(args[0])}"
    if origin is dict:
        return f"a mapping of {_described(args[0])} to {_described(args[1])}"
    return {str: "text", bool: "true or false", int: "a whole number", float: "a number",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))
