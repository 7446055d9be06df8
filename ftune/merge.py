"""`ftune merge RUN`: fold a LoRA run's adapter into its base model and save a standalone model.

The merged model is written into a folder of its own, marked as ftune merge output. `--overwrite` replaces only
an earlier merge output, never the run, the base model, or a folder that holds either; the new model is built
beside the old one (beside the real folder, when --output-dir is a link) and swapped in only when it is complete.
"""

from __future__ import annotations

from pathlib import Path

from ftune import console
from ftune.errors import UsageError
from ftune.folders import build_output, prepare_output_folder, publish_output
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
    build = build_output(output_dir, "merge", run=str(run.path.resolve()))
    try:
        model.save_pretrained(str(build.path))
        tokenizer.save_pretrained(str(build.path))
        publish_output(build, output_dir, "merge")
    except BaseException:
        build.undo()
        raise
    finally:
        build.release()
    console.info(f"merged {run.path} into {run.config.model}: standalone {type(model).__name__} saved to "
                 f"{output_dir}")
    return output_dir
