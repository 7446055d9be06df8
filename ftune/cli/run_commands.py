"""Commands that use a finished run: eval, predict, merge.

`ftune predict` names no task: its input options (--text, --question ...) and settings (--num-beams ...) are
the union of what the tasks declare (`Task.predict_inputs`, `Task.predict_settings`), each option's help
saying which tasks read it; the run's own task then takes the ones it declared.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune.cli.common import Debug, LogFormat, LogFormatOption, Quiet, RunArg


def eval_command(
    run: RunArg,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Score other data instead of the recorded "
                                                "held-out split.")] = None,
    data_config: Annotated[Optional[str], typer.Option("--data-config", help="Configuration of a Hub dataset.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split of --data to score (default: its "
                                                 "validation/test split, else all rows).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Where to write the results "
                                                       "(default: the run for its recorded split, RUN/evals/NAME "
                                                       "for other data).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size (default: the "
                                                      "run's eval batch size).")] = None,
    max_eval_samples: Annotated[Optional[int], typer.Option("--max-eval-samples", min=1,
                                                            help="Score only the first N rows.")] = None,
    quiet: Quiet = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: Debug = False,
) -> None:
    """Evaluate a run on the held-out split recorded at training time (or on --data/--split)."""
    from ftune.evaluation import evaluate_run

    evaluate_run(run, data=data, data_config=data_config, split=split, output_dir=output_dir,
                 batch_size=batch_size, max_eval_samples=max_eval_samples)


def make_predict_command(tasks):
    """`ftune predict`, with the input options and settings every task declares."""
    inputs: dict[str, tuple[str, list[str]]] = {}     # flag -> (help, tasks)
    settings: dict[str, tuple[str, type, list[str]]] = {}
    for task in tasks:
        for item in task.predict_inputs:
            inputs.setdefault(item.flag, (item.help, []))[1].append(task.name)
        for item in task.predict_settings:
            settings.setdefault(item.flag, (item.help, item.type, []))[2].append(task.name)

    def parameter(flag: str, annotation, help_text: str, names: list[str]) -> inspect.Parameter:
        option = typer.Option(flag, help=f"{help_text} [{', '.join(names)}]", rich_help_panel="Inputs")
        return inspect.Parameter(_python_name(flag), inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[annotation, option])

    fixed = [
        inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=RunArg),
        inspect.Parameter("input_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option("--input", "-i", help="A .csv/.tsv/.json/.jsonl/.parquet file with the "
                                         "run's input columns.")]),
        inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option("--output", help="Write predictions to FILE (.jsonl or .csv); default: "
                                         "JSON lines on stdout.")]),
        inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--overwrite", help="Replace an existing --output file (never the --input file).")]),
        inspect.Parameter("batch_size", inspect.Parameter.KEYWORD_ONLY, default=32, annotation=Annotated[
            int, typer.Option("--batch-size", min=1, help="Inference batch size.")]),
        inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Debug),
    ]
    params = fixed + [parameter(flag, Optional[list[str]], text, names) for flag, (text, names) in inputs.items()]
    params += [parameter(flag, Optional[kind], text, names) for flag, (text, kind, names) in settings.items()]

    def predict(**kwargs):
        from ftune.prediction import predict_run

        given_inputs = {flag: kwargs[_python_name(flag)] for flag in inputs if kwargs[_python_name(flag)]}
        given_settings = {flag: kwargs[_python_name(flag)] for flag in settings
                          if kwargs[_python_name(flag)] is not None}
        predict_run(kwargs["run"], inputs=given_inputs, settings=given_settings, input_file=kwargs["input_file"],
                    output=kwargs["output"], batch_size=kwargs["batch_size"], overwrite=kwargs["overwrite"])

    predict.__signature__ = inspect.Signature(params)
    predict.__annotations__ = {p.name: p.annotation for p in params}
    predict.__name__ = "predict"
    predict.__doc__ = ("Predict with a finished run: its task's inputs (" + ", ".join(inputs) +
                       ") or --input FILE.")
    return predict


def _python_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def merge_command(
    run: RunArg,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the merged standalone model.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier merge output in "
                                            "--output-dir.")] = False,
    debug: Debug = False,
) -> None:
    """Merge a LoRA run into its base model and save a standalone model."""
    from ftune.merge import merge_run

    merge_run(run, output_dir, overwrite=overwrite)
