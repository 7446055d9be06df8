"""What a task recipe provides to the training spine (`ftune.train`) and to eval/predict.

A task holds only what differs between tasks: which columns it reads, how rows become features, which
model class it trains, how predictions are scored and shown. Everything else — LoRA wrapping, precision,
seeds, splits, saving, the run directory, errors — lives once in the spine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ftune.errors import UsageError


@dataclass
class Evaluation:
    """The outcome of scoring a held-out split: SPEC metrics, one prediction row per example, and extras."""

    metrics: dict[str, float]                 # "eval_..." scalars, as written to eval_results.json
    predictions: list[dict[str, Any]]         # id, prediction, reference (+ task extras)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. per-class figures, confusion matrix
    table: Optional[str] = None               # extra text shown after the metrics table


class Task:
    """Base class of the four task recipes; the attributes say how the spine treats the task."""

    name: str
    model_class: str            # transformers auto class, e.g. "AutoModelForSequenceClassification"
    peft_model_class: str       # peft auto class, e.g. "AutoPeftModelForSequenceClassification"
    peft_task_type: str         # peft TaskType name, e.g. "SEQ_CLS"
    main_metric: str            # the metric that picks the best checkpoint (without "eval_")
    greater_is_better: bool = True
    pipeline_task: Optional[str] = None

    # ---- data -------------------------------------------------------------------------------------
    def load_source(self, config):
        """The raw DatasetDict; tasks with their own file layouts (SQuAD JSON) override this."""
        from ftune.data import load_source

        return load_source(config.data, config.data_config)

    def resolve_columns(self, config, columns: list[str]) -> dict[str, Optional[str]]:
        """Map the task's roles (text, label, ...) to the data's column names; raise UsageError if unclear."""
        raise NotImplementedError

    def stratify_by(self, columns: dict[str, Optional[str]]):
        """A function giving each row's class for a stratified carve, or None."""
        return None

    def prepare_state(self, config, split, columns: dict[str, Optional[str]]) -> dict[str, Any]:
        """Check the rows and derive what the run must remember (labels, columns); saved in ftune.yaml."""
        return {"columns": columns}

    def check_eval_rows(self, config, state: dict[str, Any], rows, where: str) -> None:
        """Raise UsageError if other data given to `ftune eval --data` cannot be scored by this run."""
        missing = [c for c in state.get("columns", {}).values() if c and c not in rows.column_names]
        if missing:
            raise UsageError(f"{where} has no column {', '.join(missing)}, which this run reads; the columns are: "
                             f"{', '.join(rows.column_names)}")

    # ---- model ------------------------------------------------------------------------------------
    def base_model_kwargs(self, state: dict[str, Any]) -> dict[str, Any]:
        """Extra from_pretrained arguments for the base model (e.g. num_labels)."""
        return {}

    def load_tokenizer(self, config):
        """The tokenizer of `config.model` (lm overrides it to read a GGUF file's)."""
        from ftune.models import load_tokenizer

        return load_tokenizer(config.model)

    def load_model(self, config, tokenizer, state: dict[str, Any]):
        from ftune.models import load_model
        from ftune.precision import quantization_kwargs

        return load_model(self.model_class, config.model, **self.base_model_kwargs(state),
                          **quantization_kwargs(config))

    def load_base_model(self, run_config: dict[str, Any], state: dict[str, Any], **kwargs):
        """The base model a LoRA run was trained on; `run_config` is the run's ftune.yaml."""
        from ftune.models import load_model

        return load_model(self.model_class, run_config["model"], **self.base_model_kwargs(state), **kwargs)

    # ---- features and training --------------------------------------------------------------------
    def preprocess(self, config, tokenizer, ds, state: dict[str, Any], *, training: bool):
        raise NotImplementedError

    def collator(self, config, tokenizer, model, pad_to_multiple_of: Optional[int]):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def compute_metrics(self, state: dict[str, Any]):
        """The Trainer's compute_metrics for the evaluations during training (None: loss only)."""
        return None

    def trainer_class(self):
        from ftune.trainers import FtuneTrainer

        return FtuneTrainer

    def arguments_class(self):
        from transformers import TrainingArguments

        return TrainingArguments

    def training_arguments(self, config) -> dict[str, Any]:
        """Task-specific TrainingArguments (e.g. predict_with_generate for seq2seq)."""
        return {}

    # ---- scoring and inference --------------------------------------------------------------------
    def evaluate(self, trainer, tokenizer, config, rows, state: dict[str, Any]) -> Evaluation:
        """Score `rows` (raw held-out rows) with the trainer's model; used at the end of training and by eval."""
        raise NotImplementedError

    def predict(self, model, tokenizer, config: dict[str, Any], state: dict[str, Any], inputs: list[dict],
                batch_size: int) -> list[dict[str, Any]]:
        """Outputs for raw input rows (the keys are the run's column names)."""
        raise UsageError(f"ftune predict does not serve {self.name} runs; use ftune generate with them")

    def inputs_from_options(self, state: dict[str, Any], options: dict[str, list[str]]) -> list[dict]:
        """Input rows from `ftune predict` options (--text, --question ...)."""
        raise UsageError(f"ftune predict does not serve {self.name} runs; use ftune generate with them")

    def model_card_usage(self, run_path: str, lora: bool, state: dict[str, Any]) -> str:
        """Python that loads the trained model, for the model card."""
        cls = self.peft_model_class if lora else self.model_class
        module = "peft" if lora else "transformers"
        return (f"from {module} import {cls}\nfrom transformers import AutoTokenizer\n\n"
                f"model = {cls}.from_pretrained(\"{run_path}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\")")
