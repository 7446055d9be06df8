"""`ftune merge RUN`: fold a LoRA run's adapter into its base model and save a standalone model."""

from __future__ import annotations

import shutil
from pathlib import Path

from ftune.errors import UsageError
from ftune.hub import ensure_offline_if_unreachable
from ftune import console
from ftune.rundir import open_run


def merge_run(run_path: Path, output_dir: Path, *, overwrite: bool = False) -> Path:
    ensure_offline_if_unreachable()
    run = open_run(run_path)
    if not run.is_lora:
        raise UsageError(f"run {run.path} is a full fine-tune, already a standalone model; load it directly")
    output_dir = Path(output_dir)
    if output_dir.resolve() == run.path.resolve():
        raise UsageError("--output-dir must differ from the run directory (the run keeps its adapter)")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"{output_dir} is not empty; pass --overwrite to replace it or choose another folder")
        if not (output_dir / "config.json").is_file():
            raise UsageError(f"{output_dir} holds something other than a model; choose another folder")
        shutil.rmtree(output_dir)

    from ftune.models import load_run_model, load_run_tokenizer

    model = load_run_model(run).merge_and_unload()
    tokenizer = load_run_tokenizer(run)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    console.info(f"merged {run.path} into {run.config.model}: standalone {type(model).__name__} saved to "
                 f"{output_dir}")
    return output_dir
