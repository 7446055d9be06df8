"""`ftune export RUN_OR_MODEL --format gguf|onnx`: a run (or a model) in a format another runtime runs, verified in
that runtime before it is put where the user looks for it.

This module is the part every format shares; each format is one module beside it (`onnx.py`, `gguf.py`) with
`QUANTIZATIONS`, `DEFAULT_QUANTIZATION`, `check(model_config, task_name, quantize)` and
`export(model_dir, out_dir, *, quantize, run) -> {"files", "verification", ...}`.

- Everything is checked before anything is written: the source (a finished run, or a model folder, Hub id or
  `.gguf` file, which needs `--output-dir`), that the format takes its task and architecture, the quantisation, the
  format's extra, and the output folder.
- The output folder is an ftune output folder of kind "export" (ftune.folders): by default `RUN/exports/FORMAT` (or
  `FORMAT-QUANT` when the quantisation is not the format's default). An earlier export is replaced only with
  `--overwrite`; any other folder that is not new or empty is refused. The export is built beside it and swapped in
  only once the format module has verified it; a failure removes the build.
- The format module reads a full transformers model folder: a full run's own folder (read only), or a LoRA run
  merged in memory and saved to a temporary folder (the run is never changed).
- `export.json` records the format, the quantisation, the source and a fingerprint of its weights, the tool versions
  and the format module's verification figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional

from ftune import console
from ftune.errors import UsageError
from ftune.rundir import EXPORT_FILE

EXPORTS_FOLDER = "exports"      # a run's exports: RUN/exports/FORMAT[-QUANT]
OUTPUT_KIND = "export"          # the kind of ftune output folder an export is (ftune.folders)
FORMATS = ("onnx", "gguf")
# Libraries whose versions an export records beside ftune's own (ftune.rundir.library_versions), when installed.
TOOLS = {"onnx": ("onnx", "onnxruntime", "onnxscript"), "gguf": ("gguf", "llama-cpp-python")}


def format_module(name: str):
    """The module that writes and verifies format `name` (ftune.export.onnx, ftune.export.gguf)."""
    if name not in FORMATS:
        raise UsageError(f"--format {name!r} is not an export format; choose one of: {', '.join(FORMATS)}")
    try:
        return importlib.import_module(f"ftune.export.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"ftune.export.{name}":
            raise
        raise UsageError(f"--format {name} is not available in this ftune; choose another --format") from None


@dataclass
class ExportSource:
    """What is exported: a finished run, or a model that is not one (`model`: a folder, Hub id or .gguf file)."""

    name: str
    run: Any = None             # ftune.rundir.FinishedRun
    model: Any = None           # ftune.models.ModelSource

    @property
    def task_name(self) -> Optional[str]:
        return self.run.task.name if self.run is not None else None

    def model_config(self):
        """The transformers configuration of the model the export holds (a LoRA run's: its base model's)."""
        from ftune.models import ModelSource

        if self.run is None:
            return self.model.load_config()
        if self.run.is_lora:
            return self.run.task.model_source(self.run.config).load_config()
        return ModelSource(str(self.run.path), str(self.run.path)).load_config()

    def protected(self) -> list[Path]:
        """Folders an export must never be written into or replace: the run, the model it was made from."""
        found = []
        if self.run is not None:
            found.append(self.run.path)
            if self.run.is_lora:
                found.append(_model_folder(self.run.task.model_source(self.run.config)))
        else:
            found.append(_model_folder(self.model))
        return [path for path in found if path is not None and path.exists()]


def _model_folder(source) -> Optional[Path]:
    if source.gguf:
        return Path(source.gguf).parent
    folder = Path(source.location).expanduser()
    return folder if folder.is_dir() else None


def open_source(source: str) -> ExportSource:
    """A finished run (a folder with ftune.yaml), else a model folder, Hub id or .gguf file; UsageError naming what
    is wrong with it."""
    from ftune.folders import CONFIG_FILE
    from ftune.models import ModelSource
    from ftune.rundir import open_run

    path = Path(source).expanduser()
    if path.is_dir() and (path / EXPORT_FILE).is_file():
        raise UsageError(f"{source} is already an export; export the run it was made from")
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return ExportSource(name=source, run=open_run(path))
    model = ModelSource.parse(source)
    model.require()
    return ExportSource(name=source, model=model)


def default_output_dir(run_path: Path, format_name: str, quantize: str, default_quantize: str) -> Path:
    name = format_name if quantize == default_quantize else f"{format_name}-{quantize}"
    return Path(run_path) / EXPORTS_FOLDER / name


def export_model(source: str, *, format_name: str, quantize: Optional[str] = None,
                 output_dir: Optional[Path] = None, overwrite: bool = False) -> Path:
    """`ftune export`: check, materialise, export and verify, record, publish. Returns the export folder."""
    from ftune.folders import build_output, prepare_output_folder, publish_output
    from ftune.hub import ensure_offline_if_unreachable
    from ftune.rundir import RunDir

    ensure_offline_if_unreachable()
    module = format_module(format_name)
    quantize = (quantize or module.DEFAULT_QUANTIZATION).lower()
    if quantize not in module.QUANTIZATIONS:
        raise UsageError(f"--quantize {quantize} is not a quantisation {format_name} offers; choose one of: "
                         f"{', '.join(module.QUANTIZATIONS)}")
    origin = open_source(source)
    if output_dir is None:
        if origin.run is None:
            raise UsageError(f"{source} is not an ftune run, and ftune never writes into a model's folder: pass "
                             "--output-dir for the export")
        output_dir = default_output_dir(origin.run.path, format_name, quantize, module.DEFAULT_QUANTIZATION)
    module.check(origin.model_config(), origin.task_name, quantize)
    output_dir = Path(output_dir)
    prepare_output_folder(output_dir, OUTPUT_KIND, overwrite=overwrite, refuse=tuple(origin.protected()))

    made_parent = not output_dir.parent.exists()
    with materialised(origin) as model_dir:
        fingerprint = weights_fingerprint(origin)
        build = build_output(output_dir, OUTPUT_KIND, format=format_name, quantization=quantize,
                             source=_source_name(origin))
        try:
            outcome = module.export(model_dir, build.path, quantize=quantize, run=origin.run)
            record = export_record(origin, format_name, quantize, fingerprint, outcome)
            RunDir(build.path).write_json(EXPORT_FILE, record)
            publish_output(build, output_dir, OUTPUT_KIND)
        except BaseException:
            build.undo()
            if made_parent:
                with contextlib.suppress(OSError):
                    output_dir.parent.rmdir()  # RUN/exports made for this export, and left empty
            raise
        finally:
            build.release()
    figures = outcome.get("verification", {})
    console.final(console.table(["verification", "value"], verification_rows(figures),
                                title=f"{format_name} {quantize} export, verified"),
                  closing=f"wrote {output_dir} ({', '.join(outcome.get('files', []))})",
                  output_dir=str(output_dir), format=format_name, quantization=quantize, verification=figures)
    return output_dir


def verification_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The scalar verification figures as table rows; tiny differences in scientific notation (not 0.0000)."""
    rows = []
    for name, value in figures.items():
        if isinstance(value, float) and value and abs(value) < 1e-3:
            rows.append((name, f"{value:.2e}"))
        elif isinstance(value, (int, float, str)):
            rows.append((name, console.format_value(value)))
    return rows


def _source_name(origin: ExportSource) -> str:
    return str(origin.run.path.resolve()) if origin.run is not None else origin.name


def export_record(origin: ExportSource, format_name: str, quantize: str, fingerprint: dict,
                  outcome: dict[str, Any]) -> dict[str, Any]:
    """export.json: what was exported from what, with which tools, and how it was verified."""
    from ftune.rundir import library_versions

    source: dict[str, Any] = {"path": _source_name(origin), **fingerprint}
    if origin.run is not None:
        source.update(task=origin.run.task.name, model=origin.run.config.model,
                      method="lora" if origin.run.is_lora else "full")
    return {"format": format_name, "quantization": quantize, "created": datetime.now().isoformat(timespec="seconds"),
            "source": source, "versions": {**library_versions(), **tool_versions(format_name)}, **outcome}


def tool_versions(format_name: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in TOOLS.get(format_name, ()):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def weights_fingerprint(origin: ExportSource) -> dict[str, Any]:
    """SHA-256 over the source's weight files (a run's model or adapter; a model's safetensors or .gguf file), so an
    export can be traced to the exact weights it was made from."""
    if origin.run is not None:
        folder = origin.run.path
        files = sorted(folder.glob("*.safetensors"))
    elif origin.model.gguf:
        files = [Path(origin.model.gguf)]
    else:
        folder = Path(origin.model.location).expanduser()
        files = (sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))) if folder.is_dir() else []
    if not files:
        return {}
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"weights": [file.name for file in files], "fingerprint": f"sha256:{digest.hexdigest()}"}


@contextlib.contextmanager
def materialised(origin: ExportSource) -> Iterator[Path]:
    """A full transformers model folder with its tokenizer, for the format module to read: a full run's own folder, a
    local model folder as it is, or else (a LoRA run merged in memory, a Hub model, a .gguf file dequantised) a
    temporary folder removed afterwards. Nothing is written into the run or the model's folder."""
    if origin.run is not None and not origin.run.is_lora:
        yield origin.run.path
        return
    if origin.run is None and not origin.model.gguf and (Path(origin.model.location).expanduser()
                                                          / "config.json").is_file():
        yield Path(origin.model.location).expanduser()
        return
    with tempfile.TemporaryDirectory(prefix="ftune-export-") as scratch:
        console.info(f"materialising {origin.name} as a full model folder")
        if origin.run is not None:
            from ftune.models import load_run_model, load_run_tokenizer

            model = load_run_model(origin.run).merge_and_unload()
            tokenizer = load_run_tokenizer(origin.run)
        else:
            model, tokenizer = _load_model(origin.model)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        yield Path(scratch)


def _load_model(source):
    """A model that is not a run, with the auto class its configuration names (a .gguf file: a causal LM)."""
    if source.gguf:
        return source.load_model("AutoModelForCausalLM"), source.load_tokenizer()
    config = source.load_config()
    architecture = (getattr(config, "architectures", None) or [""])[0]
    auto_class = next((auto for suffix, auto in AUTO_CLASSES if architecture.endswith(suffix)), "AutoModel")
    return source.load_model(auto_class), source.load_tokenizer()


# The auto class of a model's architecture name, by its suffix (the heads the formats export).
AUTO_CLASSES = (("ForSequenceClassification", "AutoModelForSequenceClassification"),
                ("ForTokenClassification", "AutoModelForTokenClassification"),
                ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
                ("ForCausalLM", "AutoModelForCausalLM"), ("LMHeadModel", "AutoModelForCausalLM"))
