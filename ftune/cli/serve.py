"""`ftune serve`: a run or model behind an HTTP API (ftune.serve; FastAPI and uvicorn come with `.[serve]`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ftune.cli.common import Debug


def serve_command(
    source: Annotated[str, typer.Argument(metavar="RUN_OR_MODEL", help="A run folder (every task; full, LoRA or "
                                          "merged), a model folder or Hub id that generates text, or a .gguf file.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one, printed when ready).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="FTUNE_API_KEY", show_envvar=True,
                                                   help="Require 'Authorization: Bearer KEY' on every endpoint but "
                                                   "/health.")] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="The model name clients send (default: "
                                                      "the run's folder name or the model's name).")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Most rows (inputs or choices) the model "
                                                "runs at once.")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="Longest a request waits for others to share "
                                               "its batch.")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Most rows waiting; beyond it requests get 503 with "
                                           "Retry-After.")] = 256,
    engine: Annotated[str, typer.Option("--engine", help="transformers: ftune's own server; llamacpp: a .gguf "
                                        "file through llama.cpp (pip install 'ftune[llamacpp]'); vllm: vLLM's "
                                        "OpenAI-compatible server (lm runs, CUDA GPUs).")] = "transformers",
    tensor_parallel_size: Annotated[Optional[int], typer.Option("--tensor-parallel-size", help="GPUs to split the "
                                                                "model over (--engine vllm).")] = None,
    debug: Debug = False,
) -> None:
    """Serve a run or model over HTTP: /v1/predict (every task but lm), OpenAI-compatible completions, /health."""
    from ftune.errors import UsageError

    try:
        from ftune.serve import ServeOptions, serve
        if engine != "vllm":
            import fastapi  # noqa: F401 — the extra's packages, checked before anything loads
            import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"ftune serve needs the serve extra ({exc.name} is missing): pip install 'ftune[serve]'"
                         ) from None
    serve(ServeOptions(source=source, host=host, port=port, api_key=api_key, model_name=model_name,
                       max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, engine=engine,
                       tensor_parallel_size=tensor_parallel_size))
