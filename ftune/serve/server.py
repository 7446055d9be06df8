"""ftune's own server (`--engine transformers`): the checks, the model loaded once, uvicorn on a socket bound
before the model loads, the ready line, and the stop on SIGTERM or Ctrl-C.

Order: the options, the run or model (readable?), the port (free? `--port 0` takes a free one), the model loaded;
only then one line on stdout says the server is ready, with its URL and endpoints. A stop signal makes uvicorn
refuse new connections and wait for the requests in flight (streams included); the batch worker then finishes
what is queued and the command returns (exit 0).
"""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path

from ftune import console
from ftune.errors import RunFailed, UsageError

NO_PREDICT_LM = ("lm runs generate text: use POST /v1/completions or /v1/chat/completions; /v1/predict serves runs "
                 "of the other tasks")
NO_PREDICT_MODEL = ("/v1/predict needs an ftune run, which knows its task and input columns; this server serves a "
                    "model: use POST /v1/completions or /v1/chat/completions")


def serve(options) -> None:
    from ftune.hub import ensure_offline_if_unreachable

    ensure_offline_if_unreachable()
    run = _open(options.source)
    sock = bind(options.host, options.port)
    with contextlib.closing(sock):
        served = load(run, options)
        run_server(served, sock, options)


def _open(source: str):
    """The finished run (or export of one) at `source`, or None for a model; UsageError when it cannot be read."""
    from ftune.folders import CONFIG_FILE
    from ftune.rundir import open_run

    path = Path(source).expanduser()
    if (path / CONFIG_FILE).is_file():
        return open_run(path, exports=True)
    from ftune.models import ModelSource

    ModelSource.parse(source).load_config()   # a model that cannot be read fails here, before the port is taken
    return None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or UsageError saying the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}; pass an address such as 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port, or --port 0 for a "
                         "free one") from None
    sock.set_inheritable(True)
    return sock


def load(run, options):
    """The model loaded once, behind the endpoints it takes (ftune.serve.app.Served)."""
    name = options.model_name or _default_name(run, options.source)
    served = new_served(options, name, no_predict=NO_PREDICT_MODEL if run is None else NO_PREDICT_LM,
                        max_batch_size=options.max_batch_size)
    if run is not None and run.task.predict_inputs:
        from ftune.prediction import Predictor
        from ftune.serve.predict import PredictService

        served.predict = PredictService(Predictor(run, batch_size=options.max_batch_size), served.batcher)
    if run is None or run.task.generates_text:
        from ftune.generation import load_generation_model
        from ftune.serve.generator import Generator
        from ftune.serve.openai_api import CompletionsService

        model, tokenizer = load_generation_model(options.source if run is None else str(run.path))
        generator = Generator(model, tokenizer, on_tokens=served.metrics.generated_tokens.inc)
        served.completions = CompletionsService(generator, served.batcher, name)
    return served


def new_served(options, name: str, *, no_predict: str, max_batch_size: int):
    """A Served under `name` with its metrics and batch queue, its endpoints not yet given."""
    from ftune.serve.app import Served
    from ftune.serve.batching import Batcher
    from ftune.serve.metrics import ServerMetrics

    metrics = ServerMetrics()
    batcher = Batcher(max_batch_size=max_batch_size, max_wait_s=options.max_wait_ms / 1000,
                      max_queue=options.max_queue, on_batch=metrics.batch_rows.observe,
                      on_queue=metrics.queue_rows.set)
    return Served(model_name=name, batcher=batcher, metrics=metrics, api_key=options.api_key, no_predict=no_predict)


def _default_name(run, source: str) -> str:
    if run is not None:
        return run.path.resolve().name
    from ftune.models import ModelSource

    return ModelSource.parse(source).display_name


def run_server(served, sock: socket.socket, options) -> None:
    """uvicorn serving `served` on the bound socket until a stop signal; the ready line once it listens."""
    from ftune.serve.app import build_app

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    endpoints = ", ".join(served.endpoints())
    served.batcher.start()
    try:
        started = serve_app(build_app(served), sock, lambda: console.result(
            f"ftune serve: {served.model_name} ready at http://{shown}:{port} — {endpoints}"))
    finally:
        served.batcher.stop()
        if served.predict is not None:
            served.predict.predictor.close()
    if not started:
        raise RunFailed(f"the server did not start on {shown}:{port}; rerun with --debug for uvicorn's messages")


def serve_app(app, sock: socket.socket, on_ready) -> bool:
    """uvicorn serving the ASGI `app` on the bound socket until SIGTERM or Ctrl-C (in-flight requests finish);
    `on_ready()` once it listens. Returns whether it started (ftune board serves its app through this too)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if not self.should_exit:
                on_ready()

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn raises the signal again once it has shut down, which would end the process with 143: a
            # server stopped by SIGTERM or Ctrl-C has done its job and exits 0.
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=None)
    server = Server(config)
    server.run(sockets=[sock])
    return server.started
