"""`ftune sweep TASK`: one subcommand per task, taking every option of `ftune TASK` plus the sweep's own.

The task's options come from the same configuration fields as the training command's (so they cannot drift); the
sweep's own from `ftune.sweep.options.SweepOptions`. A recipe's `sweep:` section gives the same as the flags
(flags win); on --resume the sweep's own sweep.yaml is the lowest layer. Nothing heavy is imported here.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftune.cli.common import environment_defaults, guarded
from ftune.cli.train_commands import config_parameters
from ftune.config import SWEEP_KEY, parse_set_options, read_yaml_layer, resolve_config
from ftune.sweep.options import resolve_sweep_options, saved_sweep_layers, sweep_fields

CONTROL = {
    "param": Annotated[Optional[list[str]], typer.Option(
        "--param", "-p", help="KEY=SPEC, repeatable: a training option by its flag name and its range or choices: "
        "lr=1e-5..1e-3:log, warmup=0.0..0.2, lora-r=4..32:int, batch-size=8,16,32.", rich_help_panel="Sweep")],
    "config": Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML recipe: options as in ftune.yaml, "
                                                     "and a `sweep:` section (params, trials, metric ...); flags win.",
                                                     rich_help_panel="Run")],
    "set_": Annotated[Optional[list[str]], typer.Option("--set", help="key=value override of a training option, "
                                                        "repeatable; wins over flags and --config.",
                                                        rich_help_panel="Run")],
    "resume": Annotated[bool, typer.Option("--resume", help="Continue the sweep in --output-dir after a crash or kill: "
                                           "finished trials stay, interrupted ones are replaced.",
                                           rich_help_panel="Run")],
    "debug": Annotated[bool, typer.Option("--debug", help="Show tracebacks and library warnings.",
                                          rich_help_panel="Run")],
}
CONTROL_DEFAULTS = {"param": None, "config": None, "set_": None, "resume": False, "debug": False}


def make_sweep_app(tasks) -> typer.Typer:
    """The `ftune sweep` group: `ftune sweep classify ...`, `ftune sweep lm ...` and so on."""
    app = typer.Typer(name="sweep", no_args_is_help=True, help="Hyperparameter search (Optuna): every trial a "
                      "complete run in SWEEP/trial-NNN, one recorded held-out split, best.yaml, resumable.")
    for task in tasks:
        app.command(task.name, help=f"Search hyperparameters of ftune {task.name}: {task.summary}")(
            guarded(make_sweep_command(task), stops_on_signals=True))
    return app


def _sweep_parameter(field, tp) -> inspect.Parameter:
    meta = field.metadata
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    help_text = meta.get("help", "")
    if field.default is not None:
        help_text += f" (default: {field.default})"
    option = typer.Option("--" + field.name.replace("_", "-"), help=help_text, rich_help_panel=meta.get("panel"),
                          metavar="|".join(meta["choices"]) if meta.get("choices") else None, show_default=False)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[base], option])


def make_sweep_command(task):
    """The `ftune sweep TASK` command function."""
    sweep_names = [f.name for f, _ in sweep_fields()]
    params = config_parameters(task.options_class)
    params += [_sweep_parameter(f, tp) for f, tp in sweep_fields()]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=CONTROL_DEFAULTS[name],
                                 annotation=annotation) for name, annotation in CONTROL.items()]

    def command(**kwargs):
        from ftune.sweep.space import parse_param_flags

        control = {name: kwargs.pop(name) for name in CONTROL}
        sweep_flags = {name: kwargs.pop(name) for name in sweep_names if kwargs[name] is not None}
        if control["param"]:
            sweep_flags["params"] = parse_param_flags(control["param"])
        layers: list[tuple[str, dict[str, Any]]] = []
        sweep_layers: list[tuple[str, Any]] = []
        if control["config"] is not None:
            recipe = read_yaml_layer(control["config"])
            layers.append((f"--config {control['config']}", recipe))
            sweep_layers.append((f"--config {control['config']}", recipe.get(SWEEP_KEY) or {}))
        layers.append(("flags", {name: value for name, value in kwargs.items() if value is not None}))
        layers.append(("--set", parse_set_options(control["set_"] or [])))
        sweep_layers.append(("flags", sweep_flags))
        if control["resume"]:
            saved, saved_sweep = _saved_layers(layers, task.name)
            layers, sweep_layers = saved + layers, saved_sweep + sweep_layers
        config = resolve_config(task.options_class, layers=environment_defaults(task.options_class) + layers)
        options = resolve_sweep_options(sweep_layers)
        from ftune.sweep.runner import run_sweep

        run_sweep(task, config, options, resume=control["resume"])

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = f"sweep_{task.name}"
    command.__doc__ = f"Search hyperparameters of ftune {task.name}."
    return command


def _saved_layers(layers: list[tuple[str, dict]], task_name: str) -> tuple[list, list]:
    """The sweep.yaml of the --output-dir being resumed, when it has one."""
    output_dir = None
    for _, layer in layers:
        for key in ("output_dir", "output-dir"):
            if layer.get(key):
                output_dir = layer[key]
    return saved_sweep_layers(Path(output_dir), task_name) if output_dir else ([], [])
