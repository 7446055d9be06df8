"""The HTTP application of `ftune serve` (FastAPI): its routes, the API key, the body limit, the error objects and
the metrics of every request.

Bodies are read and parsed here (not by FastAPI's models) so that every refusal is one OpenAI-style error object
with the right status: malformed JSON 400, a body over `MAX_BODY_BYTES` 413, a missing API key 401, an unknown
model 404, a full queue 503 with Retry-After; the endpoints' own checks raise ApiError (ftune.serve.errors).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at runtime.
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Optional

from ftune.serve.batching import Batcher, Overloaded
from ftune.serve.errors import ApiError, error_body
from ftune.serve.metrics import ServerMetrics

MAX_BODY_BYTES = 8 * 1024 * 1024
RETRY_AFTER_SECONDS = 1
OPEN_PATHS = ("/health",)          # answered without the API key: the readiness probe
TOO_LARGE = f"the body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB; send fewer rows per request"


@dataclass
class Served:
    """What one server serves: a model under one name, through the endpoints it takes."""

    model_name: str
    batcher: Batcher
    metrics: ServerMetrics
    predict: Any = None                 # PredictService, for runs of every task but lm
    completions: Any = None             # CompletionsService, for models that generate text
    no_predict: str = ""                # why /v1/predict is not served, when it is not
    api_key: Optional[str] = None

    def endpoints(self) -> list[str]:
        found = []
        if self.predict is not None:
            found.append("POST /v1/predict")
        if self.completions is not None:
            if self.completions.generator.has_chat_template:
                found.append("POST /v1/chat/completions")
            found.append("POST /v1/completions")
        return [*found, "GET /v1/models", "GET /health", "GET /metrics"]


def build_app(served: Served):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="ftune serve", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str, code: str, headers: Optional[dict] = None, param: Optional[str] = None):
        return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)

    async def guard(scope, receive, send, call_next):
        """Every request: the API key and the body limit first, then the endpoint; the metrics count what was
        answered."""
        started = time.perf_counter()

        async def counted_send(message):
            if message["type"] == "http.response.start":
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "unmatched"
                served.metrics.requests.labels(endpoint, str(message["status"])).inc()
                served.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            await send(message)

        refusal = _refusal(Request(scope))
        if refusal is not None:
            return await refusal(scope, receive, counted_send)
        await call_next(scope, receive, counted_send)

    def _refusal(request: Request):
        if served.api_key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {served.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                             "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return error(413, TOO_LARGE, "body_too_large")
        return None

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return error(503, f"the server is busy: {exc}; retry after {RETRY_AFTER_SECONDS} s", "overloaded",
                     headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception):  # Starlette answers with it, then re-raises for the log
        return error(500, f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}", "internal_error")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return error(404, f"no endpoint {request.url.path}; this server has: {', '.join(served.endpoints())}",
                         "unknown_endpoint")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not served at {request.url.path}; this server has: "
                         f"{', '.join(served.endpoints())}", "method_not_allowed")
        return error(exc.status_code, str(exc.detail), "http_error")

    async def read_json(request: Request) -> Any:
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > MAX_BODY_BYTES:
                raise ApiError(413, TOO_LARGE, code="body_too_large")
        try:
            return json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None

    def check_model(body: Any) -> None:
        name = body.get("model") if isinstance(body, dict) else None
        if name is not None and name != served.model_name:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {served.model_name!r}",
                           code="model_not_found", param="model")

    def model_object() -> dict:
        return {"id": served.model_name, "object": "model", "created": 0, "owned_by": "ftune"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.model_name}

    @app.get("/metrics")
    async def metrics():
        content, media_type = served.metrics.text()
        return Response(content, media_type=media_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != served.model_name:
            raise ApiError(404, f"model {model_id!r} is not served here; this server serves {served.model_name!r}",
                           code="model_not_found")
        info = {**model_object(), "endpoints": served.endpoints()}
        if served.predict is not None:
            info.update(served.predict.describe())
        return info

    @app.post("/v1/predict")
    async def predict(request: Request):
        body = await read_json(request)
        check_model(body)
        if served.predict is None:
            raise ApiError(400, served.no_predict, code="predict_not_served")
        return await served.predict.predict(body)

    async def complete(request: Request, chat: bool):
        body = await read_json(request)
        check_model(body)
        if served.completions is None:
            raise ApiError(400, f"{served.model_name} does not generate text; use POST /v1/predict",
                           code="generation_not_served")
        answer = await served.completions.respond(body, chat=chat, disconnected=request.is_disconnected)
        if isinstance(answer, dict):
            return answer
        return StreamingResponse(answer, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    return _Guarded(app, guard)


class _Guarded:
    """A plain ASGI wrapper (not Starlette's BaseHTTPMiddleware, which stands between a streamed response and the
    client's disconnect, so a client that left would not stop its generation)."""

    def __init__(self, app, guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            await self.guard(scope, receive, send, self.app)
        except Exception as exc:  # noqa: BLE001 — answered already (a 500 error object): one line, the server goes on
            from ftune import console

            console.warn(f"{scope.get('path')}: {type(exc).__name__}: {' '.join(str(exc).split())}")
