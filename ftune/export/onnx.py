"""`ftune export --format onnx`: a classify (single-label, multi-label, regression), ner or qa model as one ONNX
graph for onnxruntime, verified in onnxruntime against PyTorch.

- The graph is written by PyTorch's own exporter (`torch.onnx.export(..., dynamo=True)`, onnxscript), with dynamic
  batch and sequence axes; its inputs are what the tokenizer gives (input_ids, attention_mask and, where the
  tokenizer makes them, token_type_ids), its outputs the head's logits (`logits`; QA: `start_logits`, `end_logits`).
- `--quantize int8` is onnxruntime's dynamic quantisation of that graph (int8 weights, activations quantised as they
  come); the folder then holds only the quantised graph.
- The folder stands on its own: `model.onnx`, the tokenizer files, `config.json` (with `id2label`), a README with a
  plain onnxruntime example; and, for a run, its `ftune.yaml` and `split.json`, so `ftune eval EXPORT` re-scores the
  recorded held-out split and `ftune predict EXPORT` predicts, both through onnxruntime (ftune.engines.onnxruntime).
- Verification, for a run: the held-out rows go through the task's own evaluate path twice, in PyTorch (fp32) and
  in onnxruntime, each engine with the tokenizer of its own folder. fp32 must give logits within `LOGITS_TOLERANCE`
  and the same prediction for every row, else the export fails (exit 1) with the figures; int8 records how far its
  logits, predictions and held-out metric moved. For a model that is not a run, a few sample texts stand in.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Optional

from ftune.engines import ONNXRUNTIME
from ftune.engines.onnxruntime import PADDING_INDEX
from ftune.errors import RunFailed, UsageError
from ftune.folders import CONFIG_FILE
from ftune.rundir import SPLIT_FILE

QUANTIZATIONS = ("fp32", "int8")
DEFAULT_QUANTIZATION = "fp32"
MODEL_FILE = "model.onnx"
LOGITS_TOLERANCE = 1e-4         # fp32: the largest difference allowed between onnxruntime's logits and PyTorch's
# The tasks an ONNX graph serves, with the transformers class of their model and the graph's outputs.
MODEL_CLASSES = {"classify": "AutoModelForSequenceClassification", "ner": "AutoModelForTokenClassification",
                 "qa": "AutoModelForQuestionAnswering"}
OUTPUT_NAMES = {"classify": ("logits",), "ner": ("logits",), "qa": ("start_logits", "end_logits")}
EXTRA_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
RUN_FILES = (CONFIG_FILE, SPLIT_FILE)    # what `ftune eval` and `ftune predict` read of the run
# Inputs for a model that is not a run (and for tracing the graph): texts, or question and context for QA.
SAMPLE_TEXTS = ("the film was a great story with a good plot", "a terrible movie", "we propose a method",
                "the cat sleeps", "paris is the capital of france and london is the capital of england")
SAMPLE_QUESTIONS = ("what is the capital of france?", "who sleeps?", "what do we propose?", "which movie?",
                    "what is the capital of england?")


def task_of(model_config, task_name: Optional[str]) -> str:
    """The task the graph serves: the run's, or for a model that is not a run, its head's (its architecture)."""
    if task_name is not None:
        if task_name in MODEL_CLASSES:
            return task_name
        if task_name in ("lm", "dpo"):
            raise UsageError(f"ONNX export takes classify, ner and qa runs; a {task_name} run exports as GGUF: use "
                             "--format gguf")
        raise UsageError(f"ONNX export takes classify, ner and qa runs, not {task_name} runs (a generating model "
                         "needs a decoder loop the graph does not hold)")
    architecture = (getattr(model_config, "architectures", None) or ["an unknown architecture"])[0]
    for name, auto_class in MODEL_CLASSES.items():
        if architecture.endswith(auto_class.removeprefix("AutoModel")):
            return name
    raise UsageError(f"ONNX export takes models with a sequence-classification, token-classification or "
                     f"question-answering head; this one is {architecture}"
                     f"{' (use --format gguf)' if architecture.endswith(('ForCausalLM', 'LMHeadModel')) else ''}")


def check(model_config, task_name: Optional[str], quantize: str) -> None:
    """One-line UsageError, before anything is written, when this model or run cannot be exported as ONNX."""
    task_of(model_config, task_name)
    if getattr(model_config, "is_encoder_decoder", False):
        raise UsageError("ONNX export takes encoder models; this one is an encoder-decoder")
    if quantize not in QUANTIZATIONS:
        raise UsageError(f"--quantize {quantize} is not an ONNX quantisation; choose one of: "
                         f"{', '.join(QUANTIZATIONS)}")
    missing = [name for name in EXTRA_PACKAGES if find_spec(name) is None]
    if missing:
        raise UsageError(f"ONNX export needs {', '.join(missing)}; install them with: pip install 'ftune[onnx]'")


def export(model_dir: Path, out_dir: Path, *, quantize: str, run) -> dict[str, Any]:
    """Write the graph, tokenizer, config.json, README (and the run's files) into `out_dir`, then verify the graph
    in onnxruntime against the PyTorch model of `model_dir`."""
    import torch

    from ftune import console
    from ftune.export.onnx_usage import readme
    from ftune.models import ModelSource

    source = ModelSource(str(model_dir), str(model_dir))
    task = task_of(source.load_config(), run.task.name if run is not None else None)
    model = source.load_model(MODEL_CLASSES[task], dtype=torch.float32).eval()
    tokenizer = source.load_tokenizer()
    console.info(f"exporting {model_dir} to ONNX ({quantize})")
    with tempfile.TemporaryDirectory(prefix="ftune-onnx-") as scratch:
        graph = Path(scratch) / MODEL_FILE
        inputs = write_graph(model, tokenizer, task, graph)
        if quantize == "int8":
            quantize_int8(graph, out_dir / MODEL_FILE)
        else:
            shutil.move(str(graph), out_dir / MODEL_FILE)
    tokenizer.save_pretrained(str(out_dir))
    model.config.save_pretrained(str(out_dir))
    if run is not None:
        for name in RUN_FILES:
            if (run.path / name).is_file():
                shutil.copyfile(run.path / name, out_dir / name)
    (out_dir / "README.md").write_text(readme(task, run, tokenizer, inputs, quantize))

    console.info(f"verifying {MODEL_FILE} in onnxruntime")
    if run is not None:
        verification = verify_on_held_out(run, model, tokenizer, out_dir, quantize)
    else:
        verification = verify_on_samples(model, tokenizer, task, out_dir, quantize)
    return {"engine": ONNXRUNTIME, "task": task, "model_file": MODEL_FILE, "inputs": inputs,
            "outputs": list(OUTPUT_NAMES[task]), "opset": graph_opset(out_dir / MODEL_FILE),
            "files": sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")),
            "verification": verification}


# --------------------------------------------------------------------------------------------------
# Writing the graph


def sample_batch(tokenizer, task: str, count: int = 2, max_length: int = 64) -> dict:
    """Tokenized sample inputs as numpy arrays (padded, the tokenizer's own input names)."""
    texts = list(SAMPLE_TEXTS[:count])
    if task == "qa":
        return tokenizer(list(SAMPLE_QUESTIONS[:count]), texts, padding=True, truncation=True,
                         max_length=max_length, return_tensors="np")
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")


def write_graph(model, tokenizer, task: str, path: Path) -> list[str]:
    """torch.onnx.export (dynamo) of `model` into one file at `path`, batch and sequence dynamic; the input names."""
    import inspect

    import torch

    batch = sample_batch(tokenizer, task)
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in batch and name in accepted]
    example = {name: torch.from_numpy(batch[name]).long() for name in names}
    rows, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    if not os.environ.get("FTUNE_DEBUG"):
        exporter_log.setLevel(logging.ERROR)  # its notes (e.g. torchvision's operators skipped) are not the user's
    try:
        program = torch.onnx.export(model, (), kwargs=example, dynamo=True, input_names=names,
                                    output_names=list(OUTPUT_NAMES[task]),
                                    dynamic_shapes={name: {0: rows, 1: sequence} for name in names},
                                    verbose=False, report=False)
        program.save(str(path), external_data=False)
    except Exception as exc:  # noqa: BLE001 — the exporter raises many types; the user needs one line
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RunFailed(f"PyTorch's ONNX exporter could not export this {type(model).__name__}: {text}") from None
    finally:
        exporter_log.setLevel(level)
    return names


def quantize_int8(graph: Path, target: Path) -> None:
    """onnxruntime's dynamic quantisation: weights of MatMul/Gemm to int8, activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = graph.with_name("prepared.onnx")
    quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)


def graph_opset(path: Path) -> Optional[int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


# --------------------------------------------------------------------------------------------------
# Verification


class Recorded:
    """A scorer whose last raw predictions are kept, to compare two engines' logits on the same rows."""

    def __init__(self, scorer):
        self.scorer, self.predictions = scorer, None

    def predict(self, inputs, metric_key_prefix: str = "eval"):
        output = self.scorer.predict(inputs, metric_key_prefix=metric_key_prefix)
        self.predictions = output.predictions
        return output


def largest_difference(a, b) -> float:
    """The largest absolute difference between two engines' raw predictions (arrays, or tuples of them)."""
    import numpy as np

    pairs = list(zip(a, b)) if isinstance(a, (tuple, list)) else [(a, b)]
    for x, y in pairs:
        if np.shape(x) != np.shape(y):
            raise RunFailed(f"the ONNX export's outputs have shape {np.shape(y)} where PyTorch's have {np.shape(x)}: "
                            "its tokenizer does not split the rows as the run's does; nothing was written")
    largest = 0.0
    for x, y in pairs:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        # Past a row's end the outputs are padding, -100 or the pad tokens' logits as each engine batched the rows
        # (an int8 graph scores rows one at a time): only the rows' own positions are compared.
        kept = (x != PADDING_INDEX) & (y != PADDING_INDEX)
        largest = max(largest, float(np.max(np.abs(x - y)[kept], initial=0.0)))
    return largest


def verify_on_held_out(run, model, tokenizer, out_dir: Path, quantize: str) -> dict[str, Any]:
    """The run's held-out rows scored through the task's evaluate path in PyTorch and in onnxruntime."""
    from ftune import console
    from ftune.data import reload_held_out_split
    from ftune.engines.onnxruntime import OnnxExportEngine
    from ftune.trainers import inference_trainer

    task, config, state = run.task, run.config, run.state
    if not run.split:
        raise UsageError(f"run {run.path} has no split.json, so the export cannot be verified on its held-out rows; "
                         "retrain the run")
    rows, ids = reload_held_out_split(run.split, lambda data, data_config: task.load_source(config, data,
                                                                                            data_config))
    batch_size = config.eval_batch_size or 2 * config.batch_size
    with tempfile.TemporaryDirectory(prefix="ftune-onnx-") as scratch:
        pytorch = Recorded(inference_trainer(task, config, state, model, tokenizer, precision="fp32",
                                             batch_size=batch_size, scratch=scratch))
        before = task.evaluate(config, pytorch, tokenizer, state, rows, ids)
    engine = OnnxExportEngine(out_dir, batch_size=batch_size, quantization=quantize)
    onnx = Recorded(engine.scorer(config))
    after = task.evaluate(config, onnx, engine.tokenizer, state, rows, ids)

    metric = f"eval_{task.best_metric(config)[0]}"
    differing = sum(not same_prediction(a["prediction"], b["prediction"])
                    for a, b in zip(before.predictions, after.predictions))
    figures = {"rows": len(rows), "max_abs_logit_difference": largest_difference(pytorch.predictions,
                                                                                 onnx.predictions),
               "predictions_differing": differing, "metric": metric, "pytorch": before.metrics.get(metric),
               "onnxruntime": after.metrics.get(metric), "run": _recorded_metric(run, metric),
               "metrics_pytorch": _scalars(before.metrics), "metrics_onnxruntime": _scalars(after.metrics)}
    if figures["pytorch"] is not None and figures["onnxruntime"] is not None:
        figures["metric_change"] = figures["onnxruntime"] - figures["pytorch"]
    _judge(figures, quantize)
    if quantize != DEFAULT_QUANTIZATION:
        console.info(f"{quantize}: held-out {metric} {figures['pytorch']:.4f} in PyTorch, {figures['onnxruntime']:.4f} "
                     f"in onnxruntime; {differing} of {len(rows)} predictions differ")
    return figures


def same_prediction(a, b) -> bool:
    """Labels, tags and answers must be equal; a regression's number (the logit itself) within LOGITS_TOLERANCE."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= LOGITS_TOLERANCE
    return a == b


def verify_on_samples(model, tokenizer, task: str, out_dir: Path, quantize: str) -> dict[str, Any]:
    """A model that is not a run: the sample texts through PyTorch and onnxruntime, logits and their argmax."""
    import numpy as np
    import torch

    from ftune.engines.onnxruntime import inference_session

    batch = sample_batch(tokenizer, task, count=len(SAMPLE_TEXTS))
    session = inference_session(out_dir / MODEL_FILE)
    names = [item.name for item in session.get_inputs()]
    onnx = session.run(None, {name: batch[name].astype(np.int64) for name in names})
    with torch.no_grad():
        output = model(**{name: torch.from_numpy(batch[name]).long() for name in names})
    pytorch = [output[name].numpy() for name in OUTPUT_NAMES[task]]
    differing = sum(int(np.sum(a.argmax(-1) != b.argmax(-1))) for a, b in zip(pytorch, onnx))
    figures = {"rows": len(SAMPLE_TEXTS), "inputs": "sample texts (not a run: no held-out rows)",
               "max_abs_logit_difference": largest_difference(tuple(pytorch), tuple(onnx)),
               "predictions_differing": differing}
    _judge(figures, quantize)
    return figures


def _judge(figures: dict[str, Any], quantize: str) -> None:
    """fp32 must match PyTorch: logits within LOGITS_TOLERANCE and every prediction the same."""
    import math

    difference = figures["max_abs_logit_difference"]
    if not math.isfinite(difference):
        raise RunFailed(f"onnxruntime gives non-finite outputs for this {quantize} export; nothing was written")
    if quantize == DEFAULT_QUANTIZATION and (difference > LOGITS_TOLERANCE or figures["predictions_differing"]):
        raise RunFailed(f"the ONNX export does not match PyTorch on {figures['rows']} rows: largest logit difference "
                        f"{difference:.3g} (allowed {LOGITS_TOLERANCE:g}), {figures['predictions_differing']} "
                        "predictions differ; nothing was written")


def _recorded_metric(run, metric: str) -> Optional[float]:
    import json

    from ftune.rundir import EVAL_RESULTS

    try:
        return json.loads((run.path / EVAL_RESULTS).read_text()).get(metric)
    except (OSError, ValueError):
        return None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "eval_samples"}
