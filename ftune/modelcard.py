"""The run's README.md: base model, data, task, method, metrics, and how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ftune import __version__
from ftune.console import format_value


def model_card(path: Path, task, config, state, split: dict[str, Any],
               metrics: dict[str, Any], pictures: Sequence = ()) -> str:
    """The text of the run's README.md; `pictures` (ftune.pictures.Picture) are shown below the metrics."""
    method = (f"LoRA (r={config.lora_r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}, "
              f"targets={','.join(config.lora_targets) if config.lora_targets else 'default for the architecture'})"
              if config.lora else "full fine-tuning")
    held_out = (f"split `{split['eval_split']}`" if split.get("method") == "split"
                else f"{split.get('val_fraction')} of `{split.get('train_split')}` (seed {split.get('seed')}"
                     f"{', stratified' if split.get('stratified') else ''})")
    rows = "\n".join(f"| {k} | {format_value(v)} |" for k, v in metrics.items() if isinstance(v, (int, float)))
    length = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs:g} epochs"
    merge = f", `ftune merge {path} --output-dir MERGED`" if config.lora else ""
    fact_lines = "".join(f"- {fact}\n" for fact in task.model_card_facts(config, state))
    text = f"""---
library_name: {'peft' if config.lora else 'transformers'}
base_model: {config.model}
tags: [ftune, {task.name}{', lora' if config.lora else ''}]
---

# {Path(path).name}

Fine-tuned with [ftune](https://pypi.org/project/ftune/) {__version__}: `ftune {task.name}`.

- **Task:** {task.name}
- **Base model:** `{config.model}`
- **Method:** {method}
- **Data:** `{config.data}`{f' (configuration `{config.data_config}`)' if config.data_config else ''}; trained on
  {split.get('train_rows')} rows; held out: {held_out}, {split.get('rows')} rows
{fact_lines}- **Training:** {length}, learning rate {config.learning_rate:g}, batch size {config.batch_size} x \
{config.grad_accum} accumulation, seed {config.seed}

## Held-out metrics

| metric | value |
|---|---|
{rows}
{_pictures_section(pictures)}
## Use

```python
{task.model_card_usage(config, state, str(Path(path).resolve()))}
```

Or with ftune: `ftune eval {path}`, `ftune predict {path} ...`{merge}.
The full configuration is in `ftune.yaml`; the held-out rows are recorded in `split.json`.{_logs_line(config)}
"""
    return text


def _logs_line(config) -> str:
    """Where the experiment trackers' files are (--report-to)."""
    from ftune.tracking import trackers

    names = trackers(config.report_to)
    if not names:
        return ""
    view = ": `tensorboard --logdir logs`" if "tensorboard" in names else ""
    return f"\nThe training logs of {', '.join(names)} are under `logs/`{view}."


def _pictures_section(pictures: Sequence) -> str:
    """The run's pictures, linked relative to the card so they show wherever the run folder goes."""
    if not pictures:
        return ""
    shown = "\n\n".join(f"![{p.caption}]({p.file})" for p in pictures)
    return f"\n## Pictures\n\n{shown}\n"
