"""Engines: what runs a model behind ftune's one evaluate path and one predict path.

`Task.evaluate` and `Task.predict` (ftune.tasks.base) call one method of the scorer they are given,
`predict(inputs, metric_key_prefix=...)`, and read `.predictions` and `.metrics`. An engine loads a model once and
makes such scorers: transformers' Trainer (the task's own, ftune.trainers.inference_trainer) for a run, onnxruntime
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
    """The run's model in PyTorch, scored by the task's own Trainer (batching, precision and collation of training)."""

    def __init__(self, run, *, batch_size: Optional[int]):
        from ftune.models import load_run_model, load_run_tokenizer

        self.run, self.batch_size = run, batch_size
        self.tokenizer = load_run_tokenizer(run)
        self.model = load_run_model(run)
        self._scratch = tempfile.TemporaryDirectory()

    def scorer(self, config, *, phase: str = "evaluating"):
        from ftune.trainers import inference_trainer

        return inference_trainer(self.run.task, config, self.run.state, self.model, self.tokenizer,
                                 precision=self.run.precision, batch_size=self.batch_size, scratch=self._scratch.name,
                                 phase=phase)

    def close(self) -> None:
        self._scratch.cleanup()


def open_engine(run, *, batch_size: Optional[int]) -> Engine:
    """The engine of a finished run (transformers) or of an export of one (the runtime its export.json names)."""
    if run.engine == ONNXRUNTIME:
        from ftune.engines.onnxruntime import OnnxExportEngine

        return OnnxExportEngine(run.path, batch_size=batch_size)
    if run.export is not None:
        from ftune.errors import UsageError

        raise UsageError(f"{run.path} is a {run.export.get('format', 'model')} export, which ftune scores only in "
                         "its own runtime; pass the run, or an ONNX export of it")
    return TransformersEngine(run, batch_size=batch_size)
