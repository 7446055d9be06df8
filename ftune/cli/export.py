"""`ftune export RUN_OR_MODEL --format gguf|onnx`: the command's options; the work is ftune.export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftune.cli.common import Debug, LogFormat, LogFormatOption, Quiet


def export_command(
    source: Annotated[str, typer.Argument(metavar="RUN_OR_MODEL", help="A finished ftune run, or a model folder, "
                                          "Hub id or .gguf file (then --output-dir is needed).")],
    format_name: Annotated[str, typer.Option("--format", "-f", metavar="gguf|onnx", help="gguf: causal-LM runs "
                                             "and models, for llama.cpp and Ollama; onnx: classify, ner and qa "
                                             "runs, for onnxruntime.")],
    quantize: Annotated[Optional[str], typer.Option("--quantize", metavar="Q", help="gguf: f16 (default), "
                                                    "bf16, q8_0, q4_k_m, q5_k_m, q6_k; onnx: fp32 (default), "
                                                    "int8 (dynamic quantisation).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Folder for the export "
                                                       "(default: RUN/exports/FORMAT[-QUANT]).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export in that folder (only "
                                            "once the new one is verified).")] = False,
    quiet: Quiet = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: Debug = False,
) -> None:
    """Export a run for llama.cpp/Ollama (GGUF) or onnxruntime (ONNX), verified in that runtime."""
    from ftune.export import export_model

    export_model(source, format_name=format_name.lower(), quantize=quantize, output_dir=output_dir,
                 overwrite=overwrite)
