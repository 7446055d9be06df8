"""The onnxruntime engine: an ONNX export (ftune export --format onnx) scored through the tasks' own evaluate and
predict paths, without torch.

`OnnxExportEngine` opens the export once (its tokenizer and an onnxruntime session); its scorers'
`predict(inputs, metric_key_prefix)` is the part of the Trainer those paths use: it batches the model
inputs in order, pads each batch as transformers' padding collator does (the pad token's id, 0 in the masks),
runs the graph and puts the batches together as the Trainer does (each output padded to the longest with -100),
so `decode` reads the same arrays from either engine. The graph returns logits only: there is no loss, so an
evaluation through this engine reports no `eval_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ftune.engines import Engine

PADDING_INDEX = -100    # what the Trainer pads predictions of different lengths with
MODEL_FILE = "model.onnx"


@dataclass
class EngineOutput:
    """What `Trainer.predict` returns, as far as the tasks read it."""

    predictions: Any                      # one array, or a tuple of arrays (QA: start and end logits)
    metrics: dict[str, float] = field(default_factory=dict)


class OnnxScorer:
    """An onnxruntime session behind `predict(inputs, metric_key_prefix)`, `batch_size` rows at a time."""

    def __init__(self, session, *, pad_token_id: int, batch_size: int):
        self.session, self.pad_token_id, self.batch_size = session, pad_token_id, batch_size
        self.input_names = [item.name for item in session.get_inputs()]

    def predict(self, inputs, metric_key_prefix: str = "eval") -> EngineOutput:
        """The outputs of the graph for each row of `inputs` (a datasets.Dataset of model inputs), in order."""
        batches: list[list] = []
        for start in range(0, len(inputs), self.batch_size):
            rows = inputs[start:start + self.batch_size]
            feed = {name: self._padded(name, rows[name]) for name in self.input_names}
            batches.append(self.session.run(None, feed))
        outputs = [concatenated([batch[i] for batch in batches]) for i in range(len(batches[0]))] if batches else []
        predictions = outputs[0] if len(outputs) == 1 else tuple(outputs)
        return EngineOutput(predictions=predictions)

    def _padded(self, name: str, sequences: list[list[int]]):
        import numpy as np

        value = self.pad_token_id if name == "input_ids" else 0
        longest = max(len(sequence) for sequence in sequences)
        array = np.full((len(sequences), longest), value, dtype=np.int64)
        for row, sequence in enumerate(sequences):
            array[row, :len(sequence)] = sequence
        return array


def concatenated(arrays: list):
    """Batches of one output joined along the rows, each padded to the longest with -100 (as the Trainer does)."""
    import numpy as np

    shape = [sum(a.shape[0] for a in arrays), *(max(a.shape[k] for a in arrays) for k in range(1, arrays[0].ndim))]
    joined = np.full(shape, PADDING_INDEX, dtype=arrays[0].dtype)
    row = 0
    for array in arrays:
        joined[(slice(row, row + array.shape[0]), *(slice(0, n) for n in array.shape[1:]))] = array
        row += array.shape[0]
    return joined


def require_onnxruntime() -> None:
    """UsageError naming the extra to install when onnxruntime is missing."""
    from importlib.util import find_spec

    from ftune.errors import UsageError

    if find_spec("onnxruntime") is None:
        raise UsageError("onnxruntime is not installed; install it with: pip install 'ftune[onnx]'")


def load_tokenizer(folder: Path, input_names: list[str]):
    """The export's fast tokenizer, read from its tokenizer.json by transformers' PreTrainedTokenizerFast (the tasks
    read its word ids and offsets), giving the inputs the graph takes (`input_names`: token_type_ids where the
    run's tokenizer made them); AutoTokenizer would import torch through the model configurations."""
    from transformers import PreTrainedTokenizerFast

    from ftune.errors import UsageError

    if not (Path(folder) / "tokenizer.json").is_file():
        raise UsageError(f"export {folder} has no tokenizer.json; export the run again")
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder), model_input_names=input_names)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the tokenizer of export {folder}: {str(exc).strip().splitlines()[0]}; "
                         "export the run again") from None


class OnnxExportEngine(Engine):
    """An ONNX export folder opened once: its tokenizer and an onnxruntime session.

    A graph quantised dynamically (`quantization` int8) quantises each activation tensor with a scale taken from the
    whole tensor, so a row's outputs would depend on the rows (and the padding) batched with it: its rows are scored
    one at a time, and a row answers alike in `ftune eval`, `ftune predict` and a served batch, as in the export's
    verification. On a CPU that costs int8 little (its batches gain little over single rows)."""

    def __init__(self, folder: Path, *, batch_size: Optional[int], quantization: Optional[str] = None):
        from ftune.errors import UsageError

        model_file = Path(folder) / MODEL_FILE
        if not model_file.is_file():
            raise UsageError(f"export {folder} has no {MODEL_FILE}; export the run again")
        self.batch_size = 1 if quantization == "int8" else batch_size
        self.session = inference_session(model_file)
        self.tokenizer = load_tokenizer(folder, [item.name for item in self.session.get_inputs()])

    def scorer(self, config, *, phase: str = "evaluating") -> OnnxScorer:
        batch_size = self.batch_size or config.eval_batch_size or 2 * config.batch_size  # as the Trainer's
        return OnnxScorer(self.session, pad_token_id=self.tokenizer.pad_token_id or 0, batch_size=batch_size)


def inference_session(model_file: Path):
    """An onnxruntime session on the CPU for `model_file` (onnxruntime's threads: one per physical core). Its threads
    wait for work asleep rather than spinning: a spinning thread holds a core that a server's event loop, or other
    work on the machine, needs between batches (measured in docs/serving.md)."""
    require_onnxruntime()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's business
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
