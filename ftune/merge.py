"""`ftune merge RUN`: fold a LoRA run's adapter into its base model and save a standalone model.

The merged model is written into a folder of its own, marked as ftune merge output. `--overwrite` replaces only
an earlier merge output, never the run, the base model, or a folder that holds either; the new model is built
beside the old one and swapped in only when it is complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ftune import console
from ftune.errors import UsageError
from ftune.folders import mark_output, prepare_output_folder, swap_into_place
from ftune.hub import ensure_offline_if_unreachable
from ftune.rundir import open_run


def merge_run(run_path: Path, output_dir: Path, *, overwrite: bool = False) -> Path:
    ensure_offline_if_unreachable()
    run = open_run(run_path)
    if not run.is_lora:
        raise UsageError(f"run {run.path} is a full fine-tune, already a standalone model; load it directly")
    output_dir = Path(output_dir)
    source = run.task.model_source(run.config)
    protected = [run.path, Path(source.gguf).parent if source.gguf else Path(source.location)]
    protected = [p for p in protected if p.exists()]
    prepare_output_folder(output_dir, "merge", overwrite=overwrite, refuse=tuple(protected))

    from ftune.models import load_run_model, load_run_tokenizer

    model = load_run_model(run).merge_and_unload()
    tokenizer = load_run_tokenizer(run)
    # Built beside the target and moved in only when complete: a failed merge leaves nothing that looks merged.
    build = output_dir.parent / f".{output_dir.name}.ftune-staging"
    if build.exists():
        shutil.rmtree(build)  # an unfinished earlier build of ours
    mark_output(build, "merge", run=str(run.path.resolve()))
    model.save_pretrained(str(build))
    tokenizer.save_pretrained(str(build))
    if output_dir.exists() and any(output_dir.iterdir()):
        swap_into_place(build, output_dir)
    else:
        if output_dir.exists():
            output_dir.rmdir()
        build.rename(output_dir)
    console.info(f"merged {run.path} into {run.config.model}: standalone {type(model).__name__} saved to "
                 f"{output_dir}")
    return output_dir
