"""Commands that use a finished run: eval, predict, merge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune.cli.common import Debug, OutputDirOpt, RunArg, reported_errors


def eval_command(
    run: RunArg,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Score other data instead of the recorded "
                                                "held-out split.")] = None,
    data_config: Annotated[Optional[str], typer.Option("--data-config", help="Configuration of a Hub dataset.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split of --data to score (default: its "
                                                 "validation/test split, else all rows).")] = None,
    output_dir: OutputDirOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size (default: the "
                                                      "run's eval batch size).")] = None,
    max_eval_samples: Annotated[Optional[int], typer.Option("--max-eval-samples", min=1,
                                                            help="Score only the first N rows.")] = None,
    debug: Debug = False,
) -> None:
    """Evaluate a run on the held-out split recorded at training time (or on --data/--split)."""
    with reported_errors(debug):
        from ftune.evaluation import evaluate_run

        evaluate_run(run, data=data, data_config=data_config, split=split, output_dir=output_dir,
                     batch_size=batch_size, max_eval_samples=max_eval_samples)


def predict_command(
    run: RunArg,
    text: Annotated[Optional[list[str]], typer.Option("--text", help="Input text (repeatable).")] = None,
    text_pair: Annotated[Optional[list[str]], typer.Option("--text-pair", help="Second text of a pair, one per "
                                                           "--text (classify).")] = None,
    question: Annotated[Optional[list[str]], typer.Option("--question", help="Question (qa; repeatable, with "
                                                          "--context).")] = None,
    context: Annotated[Optional[list[str]], typer.Option("--context", help="Context to answer from (qa).")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="A .csv/.tsv/.json/.jsonl/.parquet "
                                                       "file with the run's input columns.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Write predictions to FILE (.jsonl or "
                                                   ".csv); default: JSON lines on stdout.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Inference batch size.")] = 32,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", min=1, help="Longest summary in "
                                                          "tokens (summarize; default: the run's "
                                                          "--max-target-length).")] = None,
    num_beams: Annotated[Optional[int], typer.Option("--num-beams", min=1, help="Beams for generating summaries "
                                                     "(summarize; default: the run's --num-beams).")] = None,
    debug: Debug = False,
) -> None:
    """Predict with a classify, qa or summarize run: --text [--text-pair], --question --context, or --input FILE."""
    with reported_errors(debug):
        from ftune.prediction import predict_run

        predict_run(run, texts=text or [], text_pairs=text_pair or [], questions=question or [],
                    contexts=context or [], input_file=input_file, output=output, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, num_beams=num_beams)


def merge_command(
    run: RunArg,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the merged standalone model.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model in --output-dir.")] = False,
    debug: Debug = False,
) -> None:
    """Merge a LoRA run into its base model and save a standalone model."""
    with reported_errors(debug):
        from ftune.merge import merge_run

        merge_run(run, output_dir, overwrite=overwrite)


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel="Use a run")(eval_command)
    app.command("predict", rich_help_panel="Use a run")(predict_command)
    app.command("merge", rich_help_panel="Use a run")(merge_command)
