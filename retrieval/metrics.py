"""Prometheus metrics: request counts and latency per route, and per-stage query timings."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Metrics:
    """One registry per app, so several apps (tests) never collide."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("catalens_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("catalens_request_seconds", "HTTP request latency", ["route"],
                                 buckets=BUCKETS, registry=self.registry)
        self.stages = Histogram("catalens_stage_seconds", "Query stage latency (encode, ann, metadata, rerank)",
                                ["stage"], buckets=BUCKETS, registry=self.registry)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)
