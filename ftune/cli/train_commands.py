"""The training commands (`ftune classify`, ...), built from the configuration fields of their task.

The common TrainConfig fields plus the task's own option group are the single description of a command's
options: each field becomes a `--flag` whose help text, panel and type come from the field, so flags, YAML
keys and `ftune.yaml` cannot drift. Every flag defaults to None, which is how an explicit flag is told apart
from a default.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftune.cli.common import LogFormat, environment_defaults
from ftune.config import config_fields, default_of, parse_set_options, read_yaml_layer, resolve_config
from ftune.errors import UsageError

# Options that steer the run rather than configure it; they are not config keys. `ftune sweep TASK` takes some of
# them (run_control_parameters), with help texts of its own.
RUN_CONTROL = {
    "config": Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file of options (keys as in "
                                                     "ftune.yaml); flags given here win over it.",
                                                     rich_help_panel="Run")],
    "set_": Annotated[Optional[list[str]], typer.Option("--set", help="key=value override, repeatable; wins over "
                                                        "flags and --config.", rich_help_panel="Run")],
    "resume": Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last "
                                           "checkpoint in --output-dir.", rich_help_panel="Run")],
    "overwrite": Annotated[bool, typer.Option("--overwrite", help="Replace a finished run in --output-dir.",
                                              rich_help_panel="Run")],
    "push_to_hub": Annotated[Optional[str], typer.Option("--push-to-hub", metavar="REPO", help="Upload the "
                                                         "finished run to this Hub repo (USER/NAME), as ftune push "
                                                         "does; checked before training.", rich_help_panel="Run")],
    "private": Annotated[bool, typer.Option("--private", help="With --push-to-hub: create the repo private.",
                                            rich_help_panel="Run")],
    "quiet": Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors, warnings and the final table.",
                                          rich_help_panel="Run")],
    "log_format": Annotated[LogFormat, typer.Option("--log-format", help="text: bars on a terminal, plain lines "
                                                    "elsewhere; json: one JSON object per event on stdout.",
                                                    rich_help_panel="Run")],
    "debug": Annotated[bool, typer.Option("--debug", help="Show tracebacks and library warnings.",
                                          rich_help_panel="Run")],
}
RUN_CONTROL_DEFAULTS = {"config": None, "set_": None, "resume": False, "overwrite": False, "push_to_hub": None,
                        "private": False, "quiet": False, "log_format": LogFormat.text, "debug": False}


def flag_parameter(field, tp, default: Any) -> inspect.Parameter:
    """The command parameter of an option field (`tp` its resolved type, `default` its default, shown in the help)."""
    meta = field.metadata
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    flag = "--" + field.name.replace("_", "-")
    names = [flag]
    if base is bool:
        names = [f"{flag}/--no-{field.name.replace('_', '-')}"]
    if meta.get("short"):
        names.append(meta["short"])
    help_text = meta.get("help", "")
    if default is not None and base is not bool:
        help_text += f" (default: {default})"
    elif base is bool:
        help_text += f" (default: {'on' if default else 'off'})"
    cli_type: Any = str if typing.get_origin(base) is list else base
    metavar = "|".join(meta["choices"]) if meta.get("choices") else None
    opt = typer.Option(*names, help=help_text, rich_help_panel=meta.get("panel"), metavar=metavar,
                       show_default=False)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[cli_type], opt])


def config_parameters(options_class) -> list[inspect.Parameter]:
    """One command parameter per configuration field of a task (the common ones, then the task's own)."""
    return [flag_parameter(f, tp, default_of(options_class, f.name)) for f, tp in config_fields(options_class)]


def run_control_parameters(names: Iterable[str], helps: Optional[dict[str, str]] = None) -> list[inspect.Parameter]:
    """The command parameters of the run-control options `names`, with the help texts `helps` gives instead of the
    training commands' own."""
    params = []
    for name in names:
        annotation = RUN_CONTROL[name]
        if helps and name in helps:
            base, option = typing.get_args(annotation)
            option = copy.copy(option)
            option.help = helps[name]
            annotation = Annotated[base, option]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=RUN_CONTROL_DEFAULTS[name],
                                        annotation=annotation))
    return params


def output_dir_of(layers: list[tuple[str, dict]]) -> Optional[str]:
    """The --output-dir the configuration layers name (the highest layer that names one wins), or None."""
    output_dir = None
    for _, layer in layers:
        for key in ("output_dir", "output-dir"):
            if layer.get(key):
                output_dir = layer[key]
    return output_dir


def make_train_command(task):
    """A Typer command function for one task, with one option per configuration field."""
    params = config_parameters(task.options_class) + run_control_parameters(RUN_CONTROL)

    def command(**kwargs):
        control = {name: kwargs.pop(name) for name in RUN_CONTROL}
        flags = {name: value for name, value in kwargs.items() if value is not None}
        layers = []
        if control["config"] is not None:
            layers.append((f"--config {control['config']}", read_yaml_layer(control["config"])))
        layers.append(("flags", flags))
        layers.append(("--set", parse_set_options(control["set_"] or [])))
        if control["resume"]:
            layers = _saved_config_layer(layers, control["overwrite"]) + layers
        config = resolve_config(task.options_class, layers=environment_defaults(task.options_class) + layers)
        hub_target = None
        if control["push_to_hub"]:
            from ftune.push import hub_target_for

            hub_target = hub_target_for(control["push_to_hub"], private=control["private"], flag="--push-to-hub")
        elif control["private"]:
            raise UsageError("--private applies to --push-to-hub REPO; add it or drop --private")
        from ftune import console
        from ftune.launch import maybe_relaunch

        # The ranks report as this process does, and rank 0 pushes once the run has finished.
        rank_flags = console.command_line_flags()
        if hub_target:
            rank_flags += ["--push-to-hub", hub_target.repo] + ["--private"] * hub_target.private
        if maybe_relaunch(task.name, config, resume=control["resume"], overwrite=control["overwrite"],
                          debug=control["debug"], extra_flags=rank_flags):
            return
        from ftune.train import run_training

        target = run_training(task, config, resume=control["resume"], overwrite=control["overwrite"])
        if hub_target:
            from ftune.push import push_finished_run

            push_finished_run(target, hub_target)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = task.name
    command.__doc__ = task.summary
    return command


def _saved_config_layer(layers: list[tuple[str, dict]], overwrite: bool) -> list[tuple[str, dict]]:
    """On --resume the run's own ftune.yaml is the lowest layer, so the resumed run keeps its settings (with
    --overwrite: the interrupted replacement's, in its staging folder beside the real folder a link names)."""
    from ftune.folders import run_workdir

    output_dir = output_dir_of(layers)
    if not output_dir:
        return []
    saved = run_workdir(Path(output_dir), overwrite=overwrite) / "ftune.yaml"
    if not saved.is_file():
        return []
    return [(str(saved), read_yaml_layer(saved))]
