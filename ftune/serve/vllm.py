"""`ftune serve --engine vllm`: a generative run or model handed to vLLM's own OpenAI-compatible server (`vllm
serve`), the engine for many GPUs. Its answers are vLLM's: the rule that a served answer equals `ftune generate`'s
is for ftune's own engine.

A full lm run (or a merged one, a model folder, a Hub id, a .gguf file) is served as it is; a LoRA run as its base
model plus the run as a LoRA adapter (vLLM's `--enable-lora --lora-modules NAME=PATH`), so clients ask for the
run's name. `--tensor-parallel-size` is passed through. Without vLLM, or without a CUDA GPU, the command stops with
one line saying what it needs, before anything starts. The command line follows vLLM's documented `vllm serve`
options; it has not been run here (no GPU).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from pathlib import Path

from ftune import console
from ftune.errors import UsageError

NEEDS = "--engine vllm needs the vllm package and a CUDA GPU"


def serve(options) -> None:
    require_vllm()
    command = vllm_command(options)
    console.note(f"handing over to vLLM: {' '.join(command)}")
    os.execvp(command[0], command)


def require_vllm() -> None:
    """UsageError unless vLLM is installed and a CUDA GPU is there."""
    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        raise UsageError(f"{NEEDS}, and vllm is not installed: on a GPU machine, pip install 'ftune[vllm]'; or drop "
                         "--engine to serve with ftune's own engine")
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{NEEDS}, and no CUDA GPU is visible; run it on a GPU machine, or drop --engine to serve "
                         "with ftune's own engine")


def vllm_command(options) -> list[str]:
    """`vllm serve ...` for the run or model; UsageError for what vLLM is not given here."""
    from ftune.folders import CONFIG_FILE

    path = Path(options.source).expanduser()
    model, extra = options.source, []
    name = options.model_name or (path.resolve().name if path.exists() else options.source.split("/")[-1])
    if (path / CONFIG_FILE).is_file():
        from ftune.rundir import open_run

        run = open_run(path)
        if run.task.model_class != "AutoModelForCausalLM":
            raise UsageError(f"--engine vllm serves causal-LM runs; {path} is a {run.task.name} "
                             "run: serve it with ftune's own engine (drop --engine)")
        if run.is_lora and (Path(run.config.model).expanduser() / "adapter_config.json").is_file():
            raise UsageError(f"{path} is an adapter over {run.config.model}, itself an adapter, which vLLM cannot "
                             f"stack: make one model with `ftune merge {path} --output-dir MERGED` and serve MERGED")
        if run.is_lora:
            model = run.config.model
            extra = ["--enable-lora", "--lora-modules", f"{name}={path.resolve()}",
                     "--max-lora-rank", str(run.config.lora_r)]
        else:
            model = str(path.resolve())
    port = options.port or _free_port(options.host)
    command = ["vllm", "serve", model, "--host", options.host, "--port", str(port)]
    command += ["--served-model-name", name] if not extra else []
    if options.api_key:
        command += ["--api-key", options.api_key]
    if options.tensor_parallel_size:
        command += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    return command + extra


def _free_port(host: str) -> int:
    """A port free now on `host` (vLLM takes no --port 0)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
