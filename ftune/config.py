"""Typed run configurations and how they are resolved.

A training command's options are the fields of `TrainConfig` (what every task takes) plus the fields of
its task's option group, a `TaskOptions` dataclass that the task module owns and `TrainConfig` holds as
`task_options`. Both are flat for people: one `--flag` per field, one YAML key per field, and `ftune.yaml`
lists them side by side. A value is resolved from four layers, lowest first:

    the defaults  <  --config FILE.yaml  <  flags given on the command line  <  --set key=value

(An environment variable may set an option's default for the training commands, ENVIRONMENT_DEFAULTS: a layer just
above the defaults, never silent.) Unknown keys and invalid values are errors; every problem is reported at once,
in one line. This module imports no torch, so the CLI can build its options from it cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ftune.errors import UsageError

# Keys of ftune.yaml that describe the run rather than configure it; a YAML layer may carry them.
RUN_INFO_KEY = "run"
# A recipe's search-space section: `ftune sweep` reads it, training commands leave it aside.
SWEEP_KEY = "sweep"
# A --val-fraction carve leaves at least this many training rows, or at least as many as it holds out.
MIN_TRAIN_ROWS = 10


def option(default: Any, help: str, *, panel: str = "Training", choices: tuple = (), min: float | None = None,
           max: float | None = None, exclusive_min: bool = False, exclusive_max: bool = False,
           short: str | None = None):
    """A config field: its default, its `--help` text and the checks its value must pass."""
    return field(default=default, metadata={"help": help, "panel": panel, "choices": choices, "min": min,
                                            "max": max, "exclusive_min": exclusive_min,
                                            "exclusive_max": exclusive_max, "short": short})


@dataclass
class TaskOptions:
    """A task's own option group (its columns and settings). Subclasses live in the task modules.

    `defaults` overrides defaults of the common options for this task (e.g. its default model).
    """

    defaults: typing.ClassVar[dict[str, Any]] = {}

    def check(self, config: "TrainConfig") -> list[str]:
        """Problems that involve several fields; each one a short phrase."""
        return []


@dataclass
class TrainConfig:
    """Options every training command takes."""

    model: str = option("bert-base-uncased", "Hub model id, local model folder (or .gguf file for lm).",
                        panel="Model", short="-m")
    data: Optional[str] = option(None, "Hub dataset id, a .csv/.tsv/.json/.jsonl/.parquet/.txt file, a folder "
                                       "of split files, or a save_to_disk folder.", panel="Data", short="-d")
    data_config: Optional[str] = option(None, "Configuration name of a Hub dataset (e.g. 'mnli' of 'glue').",
                                        panel="Data")
    train_split: str = option("train", "Split to train on.", panel="Data")
    eval_split: Optional[str] = option(None, "Held-out split to evaluate on (default: the data's "
                                             "validation/valid/dev/test split, else a carve of --val-fraction).",
                                       panel="Data")
    val_fraction: float = option(0.1, "Fraction of the training split held out when the data has no eval "
                                      "split (seeded; stratified by label for classification); above 0 and below "
                                      f"1, leaving at least {MIN_TRAIN_ROWS} training rows or as many as it holds "
                                      "out.", panel="Data", min=0.0, max=1.0, exclusive_min=True,
                                 exclusive_max=True)
    split_seed: Optional[int] = option(None, "Seed of the held-out carve (default: --seed); fix it to vary --seed "
                                             "over the same held-out rows.", panel="Data", min=0)
    max_train_samples: Optional[int] = option(None, "Use only the first N training rows.", panel="Data", min=1)
    max_eval_samples: Optional[int] = option(None, "Use only the first N held-out rows.", panel="Data", min=1)
    max_length: int = option(128, "Longest input in tokens; longer inputs are truncated.", panel="Data", min=8)
    preprocessing_workers: int = option(1, "Processes that tokenise the data (large data only; the result is cached "
                                           "for reruns on the same data and options).", panel="Data", min=1)
    output_dir: Optional[str] = option(None, "Run directory (default: runs/<task>-<model>-<time>).",
                                       panel="Output", short="-o")
    report_to: Optional[list[str]] = option(None, "Experiment trackers that get the training logs, comma-separated: "
                                                  "tensorboard, trackio, mlflow, wandb, or none (the default); "
                                                  "their files go under RUN/logs.", panel="Output")

    lora: bool = option(False, "Train a LoRA adapter instead of all weights.", panel="LoRA")
    lora_r: int = option(8, "LoRA rank.", panel="LoRA", min=1)
    lora_alpha: int = option(16, "LoRA scaling alpha.", panel="LoRA", min=1)
    lora_dropout: float = option(0.1, "Dropout on the LoRA path.", panel="LoRA", min=0.0, max=1.0)
    lora_targets: Optional[list[str]] = option(None, "Module names to adapt, comma-separated (default: the "
                                                     "attention projections of the architecture).", panel="LoRA")

    epochs: float = option(3.0, "Training epochs.", min=0.0, exclusive_min=True)
    max_steps: Optional[int] = option(None, "Stop after this many optimizer steps (overrides --epochs).", min=1)
    batch_size: int = option(16, "Training batch size per device.", min=1)
    eval_batch_size: Optional[int] = option(None, "Evaluation batch size per device (default: 2 x "
                                                  "--batch-size).", min=1)
    grad_accum: int = option(1, "Gradient accumulation steps (effective batch = batch size x accumulation "
                                "x processes).", min=1)
    lr: Optional[float] = option(None, "Peak learning rate (default: 5e-5 full, 2e-4 LoRA).", min=0.0,
                                 exclusive_min=True)
    warmup: float = option(0.0, "Warmup: a fraction of the steps if below 1, else a step count.", min=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay.", min=0.0)
    seed: int = option(42, "Random seed for the split, initialisation, shuffling and dropout.", min=0)
    eval_steps: Optional[int] = option(None, "Evaluate and checkpoint every N steps (default: every epoch; "
                                             "at the end with --max-steps).", min=1)
    early_stopping: Optional[int] = option(None, "Stop after PATIENCE evaluations without improvement of the "
                                                 "main metric.", min=1)
    checkpoint_minutes: float = option(10.0, "Write a resumable checkpoint at an evaluation once this many minutes "
                                             "have passed since the last (0: at every evaluation).", min=0.0)
    group_by_length: bool = option(True, "Batch examples of similar length together (less padding, faster).")
    logging_steps: int = option(10, "Log the training loss every N steps.", min=1)

    precision: str = option("auto", "auto (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU), "
                                    "fp32, bf16 or fp16.", panel="Hardware",
                            choices=("auto", "fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.",
                                          panel="Hardware")
    num_processes: int = option(1, "Training processes (ranks) to start on this machine (GPUs: one per GPU).",
                                panel="Hardware", min=1)
    accelerate_config: Optional[str] = option(None, "Launch through `accelerate launch` with a shipped config "
                                                    "(ddp, fsdp, deepspeed-zero2, deepspeed-zero3) or a YAML file.",
                                              panel="Hardware")
    compile: bool = option(False, "torch.compile the model (faster steps on GPUs after a slow first one).",
                           panel="Hardware")
    load_in_4bit: bool = option(False, "QLoRA: load the base model in 4-bit NF4 (needs --lora, a CUDA GPU and "
                                       "pip install 'ftune[qlora]').", panel="Hardware")
    cpu_speedups: bool = option(True, "Training on a CPU: ftune's dropout (masks drawn in parallel: other masks than "
                                      "PyTorch's), eager attention and the first-token last layer for encoders, kept "
                                      "freed memory; --no-cpu-speedups trains with PyTorch's own, to debug or "
                                      "compare (FTUNE_CPU_SPEEDUPS=0 makes that the default).", panel="Hardware")

    # The task's option group; flat in flags, YAML and ftune.yaml (see `to_dict`).
    task_options: TaskOptions = field(default_factory=TaskOptions, metadata={"section": True})

    def check(self) -> list[str]:
        """Problems that involve several fields; each one a short phrase."""
        problems = []
        if not self.data:
            problems.append("no data: pass --data (a file, a folder or a Hub dataset id)")
        if self.lora_targets is not None and not self.lora_targets:
            problems.append("--lora-targets is empty")
        if self.load_in_4bit and not self.lora:
            problems.append("--load-in-4bit trains LoRA adapters on a frozen 4-bit model: add --lora")
        if self.accelerate_config:
            from ftune.accelerate_configs import config_problem

            problem = config_problem(self.accelerate_config)
            if problem:
                problems.append(problem)
        if self.report_to:
            from ftune.tracking import problems as tracker_problems

            problems += tracker_problems(self.report_to)
        return problems + self.task_options.check(self)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.lora else 5e-5

    def to_dict(self) -> dict[str, Any]:
        """Every option as one flat mapping: the common ones, then the task's."""
        flat = dataclasses.asdict(self)
        own = flat.pop("task_options")
        return {**flat, **own}

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some common options changed (the original is never mutated)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------
# Resolution


def config_fields(options_class: type[TaskOptions]) -> list[tuple[dataclasses.Field, Any]]:
    """The options of a task's command: the common fields, then the task's own, with resolved types."""
    return list(_config_fields(options_class))


@functools.cache
def _config_fields(options_class: type[TaskOptions]) -> tuple[tuple[dataclasses.Field, Any], ...]:
    # Resolving the type hints compiles every annotation: the CLI asks once per option (~0.8 s in all) otherwise.
    common = typing.get_type_hints(TrainConfig)
    own = typing.get_type_hints(options_class)
    return tuple([(f, common[f.name]) for f in dataclasses.fields(TrainConfig) if not f.metadata.get("section")]
                 + [(f, own[f.name]) for f in dataclasses.fields(options_class)])


def default_of(options_class: type[TaskOptions], name: str) -> Any:
    if name in options_class.defaults:
        return options_class.defaults[name]
    f = {f.name: f for f, _ in config_fields(options_class)}[name]
    return f.default


# Options whose default an environment variable may set, for the training commands: a layer just above the built-in
# defaults (so a run's ftune.yaml on --resume, --config, flags and --set win over it); the commands say when it does.
ENVIRONMENT_DEFAULTS = {"cpu_speedups": "FTUNE_CPU_SPEEDUPS"}


def environment_layers(options_class: type[TaskOptions]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The layers the environment sets (ENVIRONMENT_DEFAULTS), and a note for each default it changes."""
    fields_by_name = {f.name: (f, tp) for f, tp in config_fields(options_class)}
    layers, notes = [], []
    for name, variable in ENVIRONMENT_DEFAULTS.items():
        raw = os.environ.get(variable, "").strip()
        if not raw:
            continue
        layers.append((variable, {name: raw}))
        f, tp = fields_by_name[name]
        try:
            value = coerce(raw, tp, f.metadata)
        except ValueError:
            continue  # resolve_config reports it, naming the variable
        if value != default_of(options_class, name):
            flag = _flag(name) if value is not False else "--no-" + name.replace("_", "-")
            shown = flag if isinstance(value, bool) else f"{flag} {value}"
            notes.append(f"{variable}={raw} in the environment: {shown} is the default")
    return layers, notes


def resolve_config(options_class: type[TaskOptions], *, layers: list[tuple[str, dict[str, Any]]]) -> TrainConfig:
    """Merge `layers` (lowest first, each named for error messages) over the defaults and validate.

    Raises UsageError listing every unknown key and invalid value at once.
    """
    fields_by_name = {f.name: (f, tp) for f, tp in config_fields(options_class)}
    values = {name: default_of(options_class, name) for name in fields_by_name}
    problems: list[str] = []
    for layer_name, layer in layers:
        for key, raw in layer.items():
            name = key.replace("-", "_")
            if name in (RUN_INFO_KEY, SWEEP_KEY):
                continue
            if name not in fields_by_name:
                problems.append(f"unknown key '{key}' in {layer_name}{_suggest(name, fields_by_name)}")
                continue
            f, tp = fields_by_name[name]
            try:
                values[name] = coerce(raw, tp, f.metadata)
            except ValueError as exc:
                problems.append(f"{_flag(name)} ({layer_name}): {exc}")
    own = {f.name for f in dataclasses.fields(options_class)}
    task_options = options_class(**{k: v for k, v in values.items() if k in own})
    config = TrainConfig(**{k: v for k, v in values.items() if k not in own}, task_options=task_options)
    problems += config.check()
    if problems:
        raise UsageError("invalid configuration: " + "; ".join(problems))
    return config


def coerce(raw: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Turn a YAML, flag or --set value into the field's type, or raise ValueError saying why not."""
    optional = type(None) in typing.get_args(tp)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if optional else tp
    if raw is None or (optional and isinstance(raw, str) and raw.strip().lower() in ("null", "none", "")):
        if optional:
            return None
        raise ValueError("a value is required")
    if base is bool:
        value = _to_bool(raw)
    elif base is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"expected a whole number, got {raw!r}")
        try:
            value = int(raw) if not isinstance(raw, str) else int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    elif base is float:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):  # NaN would pass every range check below
            raise ValueError(f"expected a finite number, got {raw!r}")
    elif typing.get_origin(base) is list:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a list, got {raw!r}")
        value = [str(i).strip() for i in items if str(i).strip()]
    else:
        if isinstance(raw, (dict, list)):
            raise ValueError(f"expected text, got {raw!r}")
        value = str(raw)
    _check_range(value, meta)
    return value


def _check_range(value: Any, meta: typing.Mapping[str, Any]) -> None:
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("exclusive_min") and value == lo)):
        raise ValueError(f"must be {'above' if meta.get('exclusive_min') else 'at least'} {lo:g}, got {value}")
    if hi is not None and (value > hi or (meta.get("exclusive_max") and value == hi)):
        raise ValueError(f"must be {'below' if meta.get('exclusive_max') else 'at most'} {hi:g}, got {value}")


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_yaml_layer(path: str | Path) -> dict[str, Any]:
    """Read a --config YAML file: a mapping of option names to values."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UsageError(f"config file {path} is not a regular file; pass the path of a YAML file to --config")
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist; pass the path of a YAML file to --config")
    data = read_yaml_file(path, "config file") or {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of option names to values")
    return data


def read_yaml_file(path: Path, what: str, *, fix: Optional[str] = None) -> Any:
    """The YAML document of a file, read with YAML's safe loader; UsageError naming the file and the line when it
    is not UTF-8 text, not valid YAML, or holds a tag that would build Python objects (e.g. !!python/object), which
    ftune never reads. `what` names the file in messages ("config file"); `fix`, when given, is what to do about any
    of these (else each says its own)."""
    import yaml

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UsageError(f"{what} {path} is not UTF-8 text (line {line} has the byte 0x{raw[exc.start]:02x}); "
                         f"{fix or 'save it as UTF-8'}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        tag = re.search(r"constructor for the tag '([^']+)'", problem)
        if tag:  # e.g. !!python/object/apply:os.system: the safe loader builds no Python objects, nor does ftune
            line = f" (line {mark.line + 1})" if mark else ""
            raise UsageError(f"{what} {path} holds the YAML tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')}"
                             f"{line}; ftune reads plain values only, never tags that build objects; "
                             f"{fix or 'remove the tag'}") from None
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise UsageError(f"{what} {path} is not valid YAML ({where}{problem}); {fix or 'fix the file'}") from None


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items; values are read as YAML scalars (so 1e-4, true, [a, b] work)."""
    import yaml

    layer: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        layer[key.strip()] = value
    return layer
