""""Try it": a finished run answering inputs typed into its page, through `ftune serve`'s own endpoint code, so the
answer is what `POST /v1/predict` (and `ftune predict`) gives for the same input.

A run's model is loaded on its first try and kept for the board's life, one `ftune.serve.predict.PredictService`
per run (a run of a task that reads inputs: the rows and settings `/v1/predict` takes), or, for a run that only
generates text (lm), serve's completions code: `{"prompt": "...", "max_tokens": n}` answers `{"text": ...}`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ftune.board.index import BoardError, BoardRun

BATCH_SIZE = 8


class Tries:
    """The loaded runs of one board (`app.state.tries`)."""

    def __init__(self):
        self._services: dict[str, Any] = {}
        self._batchers: list = []
        self._lock = threading.Lock()

    def service(self, found: BoardRun):
        """The run's predict or completions service, loaded on first use."""
        key = str(found.path.resolve())
        with self._lock:
            if key not in self._services:
                self._services[key] = self._load(found)
            return self._services[key]

    def _load(self, found: BoardRun):
        """The run's service; a run whose model cannot be loaded (a sweep trial that kept no weights, a damaged
        run) is a 409 carrying ftune's one line about it."""
        from ftune.errors import RunFailed, UsageError

        try:
            return self._open_service(found)
        except (UsageError, RunFailed) as exc:
            raise BoardError(409, f"this run cannot be tried: {exc}", "cannot_try") from None

    def _open_service(self, found: BoardRun):
        from ftune.serve.batching import Batcher

        run = found.open()
        batcher = Batcher(max_batch_size=BATCH_SIZE, max_wait_s=0.0, max_queue=256)
        if run.task.predict_inputs:
            from ftune.prediction import Predictor
            from ftune.serve.predict import PredictService

            service = PredictService(Predictor(run, batch_size=BATCH_SIZE), batcher)
        elif run.task.generates_text:
            service = _Completions(run, batcher)
        else:
            raise BoardError(400, f"{run.task.name} runs cannot be tried here", "try_not_served")
        batcher.start()
        self._batchers.append(batcher)
        return service

    async def answer(self, found: BoardRun, body: Any) -> dict[str, Any]:
        service = await asyncio.to_thread(self.service, found)   # a first try loads the model off the event loop
        return await service.predict(body)

    def close(self) -> None:
        with self._lock:
            for batcher in self._batchers:
                batcher.stop()
            for service in self._services.values():
                predictor = getattr(service, "predictor", None)
                if predictor is not None:
                    predictor.close()
            self._services.clear()
            self._batchers.clear()


class _Completions:
    """A text-generating run behind serve's completions code: a prompt in, its completion's text out."""

    def __init__(self, run, batcher):
        from ftune.generation import load_generation_model
        from ftune.serve.generator import Generator
        from ftune.serve.openai_api import CompletionsService

        model, tokenizer = load_generation_model(str(run.path))
        self.run = run
        self.completions = CompletionsService(Generator(model, tokenizer), batcher, run.path.name)

    def describe(self) -> dict[str, Any]:
        return {"task": self.run.task.name, "input_fields": ["prompt"],
                "settings": {"max_tokens": {"type": "int", "help": "Most tokens to generate."}}}

    async def predict(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise BoardError(422, 'the body is {"prompt": "...", "max_tokens": N}', "invalid_body")
        request = {"prompt": body["prompt"], "max_tokens": body.get("max_tokens", 32), "temperature": 0}

        async def connected() -> bool:
            return False

        answer = await self.completions.respond(request, chat=False, disconnected=connected)
        return {"text": answer["choices"][0]["text"]}
