"""Prometheus metrics of a server: requests by route and status, latency histograms, batch sizes, queue depth
and generated tokens (tokens/s is rate(tinybert_tokens_total[1m]))."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter("tinybert_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self._latency = Histogram("tinybert_request_seconds", "request latency", ["route"], registry=self.registry,
                                  buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60))
        self._batch = Histogram("tinybert_batch_size", "texts or sequences a model call took", ["kind"],
                                registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self._queue = Gauge("tinybert_queue_depth", "requests or texts waiting", ["model"], registry=self.registry)
        self._tokens = Counter("tinybert_tokens", "tokens generated", ["kind"], registry=self.registry)

    def request(self, route: str, status: int, seconds: float) -> None:
        known = route if route in KNOWN_ROUTES else "other"      # bounded labels, whatever clients ask for
        self._requests.labels(known, str(status)).inc()
        self._latency.labels(known).observe(seconds)

    def batch(self, kind: str, size: int) -> None:
        self._batch.labels(kind).observe(size)

    def queue(self, model: str, depth: int) -> None:
        self._queue.labels(model).set(depth)

    def tokens(self, kind: str, count: int) -> None:
        self._tokens.labels(kind).inc(count)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


KNOWN_ROUTES = ("/v1/models", "/v1/embeddings", "/v1/completions", "/v1/chat/completions",
                "/embed", "/embed_sparse", "/rerank", "/predict", "/tokenize", "/health", "/metrics")
