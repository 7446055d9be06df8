"""`GET /metrics`: the server's Prometheus figures, in a registry of its own (prometheus-client)."""

from __future__ import annotations


class ServerMetrics:
    """Requests by endpoint and status, their latency, batch sizes, the rows waiting and the tokens generated."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("ftune_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("ftune_request_seconds", "Time to answer a request (to its first byte when "
                                 "streamed), by endpoint", ["endpoint"], registry=self.registry)
        self.batch_rows = Histogram("ftune_batch_rows", "Rows (inputs or choices) in each batch the model ran",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.queue_rows = Gauge("ftune_queue_rows", "Rows waiting for a batch", registry=self.registry)
        self.generated_tokens = Counter("ftune_generated_tokens", "Tokens generated", registry=self.registry)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
