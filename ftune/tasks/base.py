"""What a task provides to the training spine (`ftune.train`), to `ftune eval` and to `ftune predict`.

A task holds only what differs between tasks: its options, which columns it reads, how rows become features,
which model class it trains, how raw model outputs become one answer per row, and how answers are scored.
Everything else — LoRA wrapping, precision, seeds, splits, saving, the run directory, errors — lives once in
the spine, and this base class owns the one evaluate path and the one predict path:

    rows --features()--> model inputs --scorer.predict, rows in order--> raw outputs
         --decode()--> one output per row --metrics()--> scores

Tasks supply `features`, `decode`, `references` and `metrics`; the base owns batching (through the scorer an
engine gives: the Trainer or a forward pass, rows kept in order), the ids, the `eval_` names, the loss and the
sample counts. The evaluations during training score with the same `decode` and `metrics` (`metrics_function`),
so the best checkpoint is chosen by exactly the figure that is reported at the end.

Task modules import no torch or transformers at import time: the CLI reads their options and help cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ftune.config import TaskOptions, TrainConfig
from ftune.errors import UsageError
from ftune.tasks.state import TaskState


@dataclass(frozen=True)
class PredictInput:
    """An input option of `ftune predict` that a task reads, repeatable (e.g. --text)."""

    name: str   # the key under which the task receives the values
    flag: str
    help: str


@dataclass(frozen=True)
class PredictSetting:
    """An option of `ftune predict` that overrides one of the run's options for inference (e.g. --num-beams)."""

    flag: str
    key: str    # the option it overrides
    help: str
    type: type = int


@dataclass
class Scores:
    """A task's figures for a set of outputs: metrics without the `eval_` prefix, and extras to show or keep."""

    metrics: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)   # e.g. per-class figures, a confusion matrix
    table: Optional[str] = None                             # text shown after the metrics table


@dataclass
class Evaluation:
    """The outcome of scoring held-out rows: SPEC metrics, one prediction row per example, and extras."""

    metrics: dict[str, float]                 # "eval_..." scalars, as written to eval_results.json
    predictions: list[dict[str, Any]]         # id, prediction, reference (+ task extras)
    details: dict[str, Any] = field(default_factory=dict)
    table: Optional[str] = None


class Task:
    """Base class of the task recipes; the class attributes say how the spine and the CLI treat the task."""

    name: str
    summary: str                        # the command's help line
    options_class: type[TaskOptions] = TaskOptions
    state_class: type[TaskState] = TaskState  # what `prepare_state` derives; saved in ftune.yaml (ftune.tasks.state)
    model_class: str                    # transformers auto class, e.g. "AutoModelForSequenceClassification"
    peft_model_class: str               # peft auto class, e.g. "AutoPeftModelForSequenceClassification"
    peft_task_type: str                 # peft TaskType name, e.g. "SEQ_CLS"
    main_metric: str                    # the metric that picks the best checkpoint (without "eval_")
    greater_is_better: bool = True
    reported_metrics: tuple[str, ...] = ()  # what `metrics` reports (without "eval_"), e.g. for `ftune sweep --metric`
    curve_metrics: tuple[str, ...] = ()     # further held-out metrics learning_curves.png draws (without "eval_")
    generates_text: bool = False        # `ftune generate` serves its runs
    metric_module: Optional[str] = None  # the ftune.metrics module `metrics` scores with, if any
    predict_inputs: tuple[PredictInput, ...] = ()
    predict_settings: tuple[PredictSetting, ...] = ()

    # ---- data -------------------------------------------------------------------------------------
    def load_source(self, config: TrainConfig, data: str, data_config: Optional[str]):
        """The raw DatasetDict of `data`; tasks with their own file layouts (SQuAD JSON, CoNLL) override this."""
        from ftune.data import load_source

        return load_source(data, data_config)

    def resolve_columns(self, config: TrainConfig, columns: list[str]) -> dict[str, Optional[str]]:
        """Map the task's roles (text, label, ...) to the data's column names; raise UsageError if unclear."""
        raise NotImplementedError

    def stratify_by(self, config: TrainConfig, columns: dict[str, Optional[str]]):
        """A function giving each row's class for a stratified carve, or None."""
        return None

    def prepare_state(self, config: TrainConfig, split, columns: dict[str, Optional[str]]) -> TaskState:
        """Check the rows and derive what the run must remember (columns, labels): a `state_class`, saved in
        ftune.yaml and given to every other task method as `state`."""
        return self.state_class(columns=columns)

    def metric_module_for(self, state: TaskState) -> Optional[str]:
        """The ftune.metrics module that scores this run (None: the task computes its figures itself)."""
        return self.metric_module

    def check_rows(self, config: TrainConfig, state: TaskState, rows, where: str) -> None:
        """Raise UsageError if rows given to `ftune eval --data` cannot be scored by this run."""
        missing = [c for c in state.columns.values() if c and c not in rows.column_names]
        if missing:
            raise UsageError(f"{where} has no column {', '.join(missing)}, which this run reads; the columns are: "
                             f"{', '.join(rows.column_names)}")

    def best_metric(self, config: TrainConfig) -> tuple[str, bool]:
        """The metric that picks the best checkpoint (without "eval_") and whether greater is better."""
        return self.main_metric, self.greater_is_better

    def metric_names(self, config: TrainConfig) -> tuple[str, ...]:
        """The metrics every evaluation of a run reports (without "eval_"), during training and in
        eval_results.json: the loss and what `metrics` reports."""
        return tuple(dict.fromkeys(("loss", *self.reported_metrics, self.best_metric(config)[0])))

    # ---- model ------------------------------------------------------------------------------------
    def model_source(self, config: TrainConfig):
        """Where the base model comes from (lm adds GGUF files)."""
        from ftune.models import ModelSource

        return ModelSource.parse(config.model)

    def base_model_kwargs(self, state: TaskState) -> dict[str, Any]:
        """Extra from_pretrained arguments for the base model (e.g. num_labels)."""
        return {}

    def load_tokenizer(self, config: TrainConfig):
        return self.model_source(config).load_tokenizer()

    def check_input_length(self, config: TrainConfig, tokenizer) -> None:
        """Raise UsageError when --max-length is above what the model's positions take (tasks that fit their
        inputs to the model themselves, lm and seq2seq, override this)."""
        model_config = self.model_source(config).load_config()
        limits = [v for k in ("max_position_embeddings", "n_positions")
                  if isinstance(v := getattr(model_config, k, None), int) and v > 0]
        tokenizer_limit = getattr(tokenizer, "model_max_length", None)
        if limits and isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            limits.append(tokenizer_limit)  # e.g. RoBERTa: 514 positions, 512 usable
        if limits and config.max_length > min(limits):
            raise UsageError(f"--max-length {config.max_length} is above the {min(limits)} tokens {config.model} "
                             f"takes; pass --max-length {min(limits)} or less")

    def load_model(self, config: TrainConfig, tokenizer, state: TaskState):
        from ftune.precision import quantization_kwargs

        if config.load_in_4bit and self.model_source(config).gguf:
            raise UsageError("--load-in-4bit does not apply to a GGUF model (it is dequantised to float for "
                             "training); drop one of them")
        return self.model_source(config).load_model(self.model_class, **self.base_model_kwargs(state),
                                                    **quantization_kwargs(config))

    # ---- features and training --------------------------------------------------------------------
    def features(self, config: TrainConfig, tokenizer, rows, state: TaskState, *, purpose: str):
        """Model features of `rows`; `purpose` is "train", "eval" (with references) or "predict" (without)."""
        raise NotImplementedError

    def model_inputs(self, features):
        """The features the model takes (tasks drop the columns that only `decode` reads)."""
        return features

    def collator(self, config: TrainConfig, tokenizer, model, pad_to_multiple_of: Optional[int]):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def trainer_class(self):
        """The Trainer class; every one derives from ftune.trainers.FtuneTrainer (rows scored in order)."""
        from ftune.trainers import FtuneTrainer

        return FtuneTrainer

    def trainer_kwargs(self, config: TrainConfig, state: TaskState) -> dict[str, Any]:
        """Constructor arguments of the task's Trainer class beyond the standard ones."""
        return {}

    # ---- scoring: supplied by each task -------------------------------------------------------------
    def decode(self, config: TrainConfig, tokenizer, state: TaskState, rows, features,
               predictions) -> list[dict[str, Any]]:
        """One output per row of `rows` from the raw predictions of `features`: {"prediction": ..., extras}."""
        raise NotImplementedError

    def references(self, config: TrainConfig, state: TaskState, rows) -> list[Any]:
        """The reference answer of each row, as eval_predictions.jsonl shows it."""
        raise NotImplementedError

    def metrics(self, config: TrainConfig, state: TaskState, outputs: list[dict[str, Any]],
                references: list[Any], features) -> Scores:
        """Scores of `outputs` against `references` (metric names without "eval_")."""
        raise NotImplementedError

    # ---- the one evaluate path --------------------------------------------------------------------
    def scoring_inputs(self, features):
        """The model inputs of `features` longest first, so that each batch holds rows of like length (little
        padding), and the order that restores the rows (`restore_order`)."""
        inputs = self.model_inputs(features)
        order = length_order(inputs)
        return inputs.select(order), order

    def metrics_function(self, config: TrainConfig, tokenizer, state: TaskState, rows, features,
                         order: list[int]):
        """The Trainer's compute_metrics for the evaluations during training, bound to the held-out rows; the
        Trainer scores `scoring_inputs(features)`, whose `order` is undone before decoding."""
        references = self.references(config, state, rows)

        def compute(eval_pred) -> dict[str, float]:
            predictions = restore_order(eval_pred.predictions, order)
            outputs = self.decode(config, tokenizer, state, rows, features, predictions)
            scores = self.metrics(config, state, outputs, references, features).metrics
            return {k: v for k, v in scores.items() if isinstance(v, (int, float))}

        return compute

    def evaluate(self, config: TrainConfig, trainer, tokenizer, state: TaskState, rows, ids: list[Any],
                 features=None) -> Evaluation:
        """Score `rows` (raw rows with references) with the trainer's model; `ids` name the rows. `features`:
        the rows' eval features when already made."""
        if features is None:
            features = self.features(config, tokenizer, rows, state, purpose="eval")
        inputs, order = self.scoring_inputs(features)
        output = trainer.predict(inputs, metric_key_prefix="eval")
        outputs = self.decode(config, tokenizer, state, rows, features, restore_order(output.predictions, order))
        references = self.references(config, state, rows)
        scores = self.metrics(config, state, outputs, references, features)
        metrics = {f"eval_{k}": v for k, v in scores.metrics.items()}
        if "eval_loss" not in metrics and "eval_loss" in output.metrics:
            metrics["eval_loss"] = float(output.metrics["eval_loss"])
        metrics["eval_samples"] = len(rows)
        predictions = [{"id": row_id, "prediction": out["prediction"], "reference": reference,
                        **{k: v for k, v in out.items() if k != "prediction"}}
                       for row_id, out, reference in zip(ids, outputs, references)]
        return Evaluation(metrics=metrics, predictions=predictions, details=scores.details, table=scores.table)

    # ---- the one predict path ---------------------------------------------------------------------
    def inputs_from_options(self, config: TrainConfig, state: TaskState,
                            options: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Input rows (keyed by the run's column names) from the values of the task's `predict_inputs`."""
        raise UsageError(f"ftune predict does not serve {self.name} runs; use ftune generate with them")

    def check_predict_settings(self, settings: dict[str, Any]) -> None:
        """Raise UsageError naming, by its own flag, each `ftune predict` setting (e.g. {"--max-new-tokens": 0})
        that the option it overrides would refuse; every problem at once."""
        from ftune.config import coerce, config_fields

        fields = {f.name: (f, tp) for f, tp in config_fields(self.options_class)}
        problems = []
        for setting in self.predict_settings:
            if setting.flag in settings:
                field_, tp = fields[setting.key]
                try:
                    coerce(settings[setting.flag], tp, field_.metadata)
                except ValueError as exc:
                    problems.append(f"{setting.flag}: {exc}")
        if problems:
            raise UsageError(f"invalid predict settings: {'; '.join(problems)}")

    def check_inputs(self, config: TrainConfig, state: TaskState, inputs: list[dict[str, Any]],
                     names: list[str]) -> None:
        """Raise UsageError naming the first unusable input row (`names` say how the user knows each row)."""

    def predict(self, config: TrainConfig, trainer, tokenizer, state: TaskState,
                inputs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
        """Each input row with the task's prediction fields added. The rows and their features stay in memory
        (`ftune.data.InMemoryRows`, read by `features` and `decode` as a Dataset is): a call's rows are scored once,
        and a Dataset's making, `map` and row selection would cost more than tokenising them."""
        from ftune.data import InMemoryRows

        self.check_inputs(config, state, inputs, names)
        rows = InMemoryRows.from_list(inputs)
        features = self.features(config, tokenizer, rows, state, purpose="predict")
        model_inputs, order = self.scoring_inputs(features)
        output = trainer.predict(model_inputs, metric_key_prefix="predict")
        outputs = self.decode(config, tokenizer, state, rows, features, restore_order(output.predictions, order))
        return [{**row, **self.prediction_fields(out)} for row, out in zip(inputs, outputs)]

    def prediction_fields(self, output: dict[str, Any]) -> dict[str, Any]:
        """What `ftune predict` adds to an input row for one decoded output."""
        return dict(output)

    # ---- pictures and the model card ---------------------------------------------------------------
    def pictures(self, config: TrainConfig, state: TaskState, evaluation: Evaluation) -> list:
        """The task's own pictures of an evaluation (ftune.pictures.Picture), drawn into the run after training
        and by `ftune eval`, from `evaluation.details` or `evaluation.predictions`; the learning curves every
        run gets are drawn by the spine."""
        return []

    def model_card_facts(self, config: TrainConfig, state: TaskState) -> list[str]:
        """Markdown lines the task adds to the model card's summary (e.g. its problem type, class weights)."""
        return []

    def model_card_usage(self, config: TrainConfig, state: TaskState, run_path: str) -> str:
        """Python that loads the trained model, for the model card."""
        cls = self.peft_model_class if config.lora else self.model_class
        module = "peft" if config.lora else "transformers"
        return (f"from {module} import {cls}\nfrom transformers import AutoTokenizer\n\n"
                f"model = {cls}.from_pretrained(\"{run_path}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{run_path}\")")


def length_order(inputs) -> list[int]:
    """Row positions, longest input first (stable among equal lengths), from the Arrow column of input ids (a
    Dataset) or the lists of them (rows in memory)."""
    import numpy as np

    from ftune.data import InMemoryRows

    if isinstance(inputs, InMemoryRows):
        lengths = np.array([len(ids) for ids in inputs["input_ids"]], dtype=np.int64)
    else:
        import pyarrow.compute as pc

        lengths = pc.list_value_length(inputs.with_format("arrow")["input_ids"]).to_numpy(zero_copy_only=False)
    return np.argsort(-lengths, kind="stable").tolist()


def restore_order(predictions, order: list[int]):
    """Predictions made in `order` (rows sorted by length) put back in the rows' own order; tuples too."""
    import numpy as np

    if isinstance(predictions, (tuple, list)):
        return type(predictions)(restore_order(p, order) for p in predictions)
    if predictions is None:
        return None
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return np.asarray(predictions)[inverse]


def first_array(predictions):
    """The logits of a model output that may come as a tuple (logits, hidden states ...)."""
    return predictions[0] if isinstance(predictions, tuple) else predictions


def softmax(logits):
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)
