"""`ftune sweep TASK`: one subcommand per task, taking every option of `ftune TASK` plus the sweep's own.

The task's options come from the same configuration fields as the training command's (so they cannot drift); the
sweep's own from `ftune.sweep.options.SweepOptions`. A recipe's `sweep:` section gives the same as the flags
(flags win); on --resume the sweep's own sweep.yaml is the lowest layer. Nothing heavy is imported here.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftune.cli.common import environment_defaults, guarded
from ftune.cli.train_commands import config_parameters, flag_parameter, output_dir_of, run_control_parameters
from ftune.config import SWEEP_KEY, parse_set_options, read_yaml_layer, resolve_config
from ftune.sweep.options import resolve_sweep_options, saved_sweep_layers, sweep_fields

PARAM = Annotated[Optional[list[str]], typer.Option(
    "--param", "-p", help="KEY=SPEC, repeatable: a training option by its flag name and its range or choices: "
    "lr=1e-5..1e-3:log, warmup=0.0..0.2, lora-r=4..32:int, batch-size=8,16,32.", rich_help_panel="Sweep")]
# The run-control options of the training commands a sweep takes, and what some of them mean here.
CONTROL = ("config", "set_", "resume", "debug")
CONTROL_HELP = {
    "config": "YAML recipe: options as in ftune.yaml, and a `sweep:` section (params, trials, metric ...); flags win.",
    "set_": "key=value override of a training option, repeatable; wins over flags and --config.",
    "resume": "Continue the sweep in --output-dir after a crash or kill: finished trials stay, interrupted ones are "
              "replaced.",
}


def make_sweep_app(tasks) -> typer.Typer:
    """The `ftune sweep` group: `ftune sweep classify ...`, `ftune sweep lm ...` and so on."""
    app = typer.Typer(name="sweep", no_args_is_help=True, help="Hyperparameter search (Optuna): every trial a "
                      "complete run in SWEEP/trial-NNN, one recorded held-out split, best.yaml, resumable.")
    for task in tasks:
        app.command(task.name, help=f"Search hyperparameters of ftune {task.name}: {task.summary}")(
            guarded(make_sweep_command(task), stops_on_signals=True))
    return app


def make_sweep_command(task):
    """The `ftune sweep TASK` command function."""
    sweep_names = [f.name for f, _ in sweep_fields()]
    params = config_parameters(task.options_class)
    params += [flag_parameter(f, tp, f.default) for f, tp in sweep_fields()]
    params += [inspect.Parameter("param", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=PARAM)]
    params += run_control_parameters(CONTROL, CONTROL_HELP)

    def command(**kwargs):
        from ftune.sweep.space import parse_param_flags

        control = {name: kwargs.pop(name) for name in CONTROL}
        sweep_flags = {name: kwargs.pop(name) for name in sweep_names if kwargs[name] is not None}
        searched = kwargs.pop("param")
        if searched:
            sweep_flags["params"] = parse_param_flags(searched)
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
            output_dir = output_dir_of(layers)
            saved, saved_sweep = saved_sweep_layers(Path(output_dir), task.name) if output_dir else ([], [])
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
