"""`ftune serve RUN_OR_MODEL`: a run or model behind an HTTP API.

What is served depends on what is given: a run of every task but lm gets `POST /v1/predict` (the objects `ftune
predict` prints); a model that generates text (an lm, summarize or translate run, a model folder, Hub id or .gguf
file) gets the OpenAI-compatible `/v1/chat/completions` and `/v1/completions`; every server has `/v1/models`,
`/health` and `/metrics`.

The engine is the seam for other runtimes: `ENGINES` names, for each `--engine`, the module that serves with it.
A module gives `serve(options)`, which checks everything it can before it says it is ready and then serves until
it is stopped. `transformers` is ftune's own server (ftune.serve.server: this package's app, batching and
generation, over the run's engine from ftune.engines, so an ONNX export is served by onnxruntime); `llamacpp` serves
a .gguf file through llama.cpp behind the same app (ftune.serve.llamacpp); `vllm` hands a generative run to vLLM's
own OpenAI-compatible server (ftune.serve.vllm).

Imported only when `ftune serve` runs: the CLI stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

from ftune.errors import UsageError

ENGINES = {"transformers": "ftune.serve.server", "llamacpp": "ftune.serve.llamacpp", "vllm": "ftune.serve.vllm"}


@dataclass
class ServeOptions:
    """`ftune serve`'s options, as given."""

    source: str                          # a run folder, a model folder or Hub id, or a .gguf file
    host: str = "127.0.0.1"
    port: int = 8000                     # 0: a free port, printed in the ready line
    api_key: Optional[str] = None
    model_name: Optional[str] = None     # the name clients send as "model" (default: the folder's or file's name)
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    engine: str = "transformers"
    tensor_parallel_size: Optional[int] = None

    def check(self) -> None:
        """UsageError naming every option out of its range, at once."""
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"--port {self.port}: must be 0 (a free port) to 65535")
        for flag, value in (("--max-batch-size", self.max_batch_size), ("--max-queue", self.max_queue)):
            if value < 1:
                problems.append(f"{flag} {value}: must be 1 or more")
        if not 0 <= self.max_wait_ms <= 10_000:
            problems.append(f"--max-wait-ms {self.max_wait_ms}: must be 0 to 10000")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("--api-key is empty: give a key, or leave the option (and FTUNE_API_KEY) out")
        if self.model_name is not None and (not self.model_name.strip() or any(c.isspace() for c in self.model_name)):
            problems.append(f"--model-name {self.model_name!r}: give a name without spaces")
        if self.engine not in ENGINES:
            problems.append(f"--engine {self.engine}: use one of {', '.join(ENGINES)}")
        if self.tensor_parallel_size is not None and self.engine != "vllm":
            problems.append("--tensor-parallel-size is vLLM's: pass it with --engine vllm")
        elif self.tensor_parallel_size is not None and self.tensor_parallel_size < 1:
            problems.append(f"--tensor-parallel-size {self.tensor_parallel_size}: must be 1 or more")
        if problems:
            raise UsageError("; ".join(problems))


def serve(options: ServeOptions) -> None:
    """Serve until stopped (SIGTERM or Ctrl-C: in-flight requests finish, then it returns)."""
    options.check()
    importlib.import_module(ENGINES[options.engine]).serve(options)
