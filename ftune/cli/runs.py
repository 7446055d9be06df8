"""`ftune runs [DIR]`, `ftune runs compare RUN RUN...` and `ftune push RUN --repo ID [--export NAME]`.

`ftune runs` is one command whose first word may be `compare`: a Typer group cannot take both a folder argument
and subcommands (the folder would swallow the subcommand's name), so the command reads its arguments itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune.cli.common import Debug, RunArg
from ftune.errors import UsageError


def runs_command(
    args: Annotated[Optional[list[str]], typer.Argument(
        metavar="[DIR] | compare RUN RUN...", show_default=False,
        help="A folder of runs (default: runs/), or `compare` and two or more run folders.")] = None,
    sort: Annotated[Optional[str], typer.Option("--sort", metavar="METRIC", help="List best first by this metric "
                                                "(e.g. f1 or eval_f1; lowest first for loss, perplexity, mse, mae); "
                                                "default: oldest first.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")] = False,
    debug: Debug = False,
) -> None:
    """List runs (task, model, full/LoRA, data, main metric, train time, status), or compare runs side by side."""
    from ftune import console
    from ftune.runs import compare_runs, comparison_text, list_runs, runs_table

    args = list(args or [])
    if args and args[0] == "compare" and (len(args) > 1 or not Path("compare").is_dir()):
        if sort:
            raise UsageError("--sort orders the listing; ftune runs compare shows the runs in the order given")
        comparison = compare_runs(args[1:])
        console.result(json.dumps(vars(comparison), indent=2, default=str) if as_json else
                       comparison_text(comparison))
        return
    if len(args) > 1:
        raise UsageError(f"ftune runs takes one folder, got {len(args)} ({' '.join(args)}); to compare runs: ftune "
                         "runs compare RUN RUN...")
    root = Path(args[0]) if args else Path("runs")
    runs = list_runs(root, sort)
    if as_json:
        console.result(json.dumps([r.to_json() for r in runs], indent=2, default=str))
    elif runs:
        console.result(runs_table(runs, root, sort))
    else:
        console.result(f"no ftune runs under {root}")


def push_command(
    run: RunArg,
    repo: Annotated[str, typer.Option("--repo", metavar="USER/NAME", help="The Hub model repo to upload to "
                                      "(created if it does not exist).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files that would be uploaded; send "
                                          "nothing (works offline, without a token).")] = False,
    export: Annotated[Optional[str], typer.Option("--export", metavar="NAME", help="Upload the run's export "
                                                  "RUN/exports/NAME (e.g. onnx, onnx-int8; see ftune export) "
                                                  "instead of the run.")] = None,
    debug: Debug = False,
) -> None:
    """Upload a finished run (or one of its exports) to the Hugging Face Hub: model or adapter, tokenizer, model card,
    ftune.yaml, results."""
    from ftune.push import push_command as push

    push(run, repo, private=private, dry_run=dry_run, export=export)
