"""Engines: what runs a model behind ftune's one evaluate path and one predict path.

`Task.evaluate` and `Task.predict` (ftune.tasks.base) call one method of the scorer they are given,
`predict(inputs, metric_key_prefix=...)`, and read `.predictions` and `.metrics`. An engine loads a model once and
makes such scorers: for a run, the model's forward pass in PyTorch (`ForwardScorer`, the batching, collation and
precision of the task's inference Trainer without the Trainer's loop) or, for tasks whose Trainer scores by other means
than one forward pass (generation), that Trainer itself (ftune.trainers.inference_trainer); onnxruntime
(ftune.engines.onnxruntime, no torch) for an ONNX export. `open_engine` picks the one a run or export names
(`FinishedRun.engine`), so `ftune eval`, `ftune predict` and `ftune serve` name none.
"""

from __future__ import annotations

import tempfile
from typing import Optional

ONNXRUNTIME = "onnxruntime"     # the engine an ONNX export names in its export.json


class Engine:
    """A model loaded once, with its tokenizer, making scorers for the task's evaluate and predict paths. Use it as a
    context manager (or `close` it)."""

    tokenizer = None

    def scorer(self, config, *, phase: str = "evaluating"):
        """A scorer for `config` (the run's configuration, or it with predict settings over it); `phase` names a
        progress bar where the engine shows one."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TransformersEngine(Engine):
    """The run's model in PyTorch: scored by its forward pass, or by the task's own Trainer where that Trainer scores
    otherwise (see the module docstring)."""

    def __init__(self, run, *, batch_size: Optional[int]):
        from ftune.models import load_run_model, load_run_tokenizer

        self.run, self.batch_size = run, batch_size
        self.tokenizer = load_run_tokenizer(run)
        self.model = load_run_model(run)
        self._scratch = tempfile.TemporaryDirectory()

    def scorer(self, config, *, phase: str = "evaluating"):
        from ftune.trainers import inference_trainer

        trainer = inference_trainer(self.run.task, config, self.run.state, self.model, self.tokenizer,
                                    precision=self.run.precision, batch_size=self.batch_size,
                                    scratch=self._scratch.name, phase=phase)
        if phase != "predicting" or not scores_by_forward(trainer):
            return trainer
        return ForwardScorer(trainer, phase=phase)

    def close(self) -> None:
        self._scratch.cleanup()


def scores_by_forward(trainer) -> bool:
    """Whether a Trainer's predictions are its model's forward outputs (not generated ids, not a task's own step)."""
    from transformers import Trainer

    return type(trainer).prediction_step is Trainer.prediction_step


class PredictOutput:
    """What `Task.predict` reads of a scorer's answer: the raw predictions (a task's metrics come from `evaluate`)."""

    def __init__(self, predictions):
        self.predictions, self.metrics = predictions, {}


class ForwardScorer:
    """The model's forward pass over rows in order, as the inference Trainer built for the same configuration scores
    them: its batch size, collator, input columns, device and precision, its outputs (the model's outputs but the
    loss and the keys its config ignores at inference) concatenated as the Trainer does (padded with -100 along the
    sequence). Without the Trainer's loop (dataloader, accelerate, callbacks), which costs more than a small batch's
    forward pass; `ftune predict`, `ftune serve` and every task's predict path use it alike. On a CPU it takes the
    exact speed-up of `ftune.cpu.scoring_speedups`. `phase` names its progress bar, as the Trainer's
    (ftune.progress)."""

    def __init__(self, trainer, *, phase: str):
        import inspect

        model = trainer.model
        inspected = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA run
        self.model, self.collator, self.phase = model, trainer.data_collator, phase
        self.batch_size = trainer.args.per_device_eval_batch_size
        self.device = trainer.args.device
        self.columns = set(inspect.signature(inspected.forward).parameters) | {"label", "label_ids"}
        self.ignored = {"loss", *getattr(model.config, "keys_to_ignore_at_inference", ["cache"])}
        self.autocast_dtype = "bfloat16" if trainer.args.bf16 else "float16" if trainer.args.fp16 else None

    def predict(self, inputs, metric_key_prefix: str = "predict") -> PredictOutput:
        import contextlib

        import torch

        from ftune import console
        from ftune.cpu import scoring_speedups

        if self.model.training:
            self.model.eval()
        rows = inputs.remove_columns([c for c in inputs.column_names if c not in self.columns]).to_list()
        outputs = None
        autocast = (torch.autocast(self.device.type, dtype=getattr(torch, self.autocast_dtype))
                    if self.autocast_dtype else contextlib.nullcontext())
        progress = console.Phase(self.phase, -(-len(rows) // self.batch_size), "batches", summary=False)
        with torch.inference_mode(), autocast, scoring_speedups(self.model, self.device):
            for start in range(0, len(rows), self.batch_size):
                batch = {k: v.to(self.device) if hasattr(v, "to") else v
                         for k, v in self.collator(rows[start:start + self.batch_size]).items()}
                answer = self.model(**batch)
                logits = tuple(v for k, v in answer.items() if k not in self.ignored)
                outputs = logits if outputs is None else tuple(map(padded_concat, outputs, logits))
                progress.advance()
        progress.close()
        if outputs is None:
            return PredictOutput(None)
        arrays = tuple((o.float() if o.dtype == torch.bfloat16 else o).cpu().numpy() for o in outputs)  # numpy: no bf16
        return PredictOutput(arrays[0] if len(arrays) == 1 else arrays)


def padded_concat(first, second, padding=-100):
    """Two batches' outputs one after the other, the shorter padded along the sequence (the Trainer's way)."""
    import torch

    if first.dim() < 2 or first.shape[1] == second.shape[1]:
        return torch.cat((first, second))
    shape = (first.shape[0] + second.shape[0], max(first.shape[1], second.shape[1]), *first.shape[2:])
    result = first.new_full(shape, padding)
    result[:first.shape[0], :first.shape[1]] = first
    result[first.shape[0]:, :second.shape[1]] = second
    return result


def open_engine(run, *, batch_size: Optional[int]) -> Engine:
    """The engine of a finished run (transformers) or of an export of one (the runtime its export.json names)."""
    if run.engine == ONNXRUNTIME:
        from ftune.engines.onnxruntime import OnnxExportEngine

        return OnnxExportEngine(run.path, batch_size=batch_size, quantization=run.export.get("quantization"))
    if run.export is not None:
        from ftune.errors import UsageError

        raise UsageError(f"{run.path} is a {run.export.get('format', 'model')} export, which ftune scores only in "
                         "its own runtime; pass the run, or an ONNX export of it")
    return TransformersEngine(run, batch_size=batch_size)
