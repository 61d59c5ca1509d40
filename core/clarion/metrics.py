"""Prometheus helpers. Metric names: `clarion_` prefix, base units, counters end in `_total`.

Metrics are defined where they are used, with `clarion.metrics.counter` and friends, so that a
process registers only its own; label values never carry user or chat ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _existing(name: str, registry: CollectorRegistry) -> object | None:
    return registry._names_to_collectors.get(name)  # re-import in tests must not fail


def counter(name: str, doc: str, labels: Sequence[str] = (),
            registry: CollectorRegistry = REGISTRY) -> Counter:
    assert name.startswith("clarion_") and name.endswith("_total")
    found = _existing(name, registry)
    if isinstance(found, Counter):
        return found
    return Counter(name.removesuffix("_total"), doc, labels, registry=registry)


def gauge(name: str, doc: str, labels: Sequence[str] = (), registry: CollectorRegistry = REGISTRY) -> Gauge:
    assert name.startswith("clarion_")
    found = _existing(name, registry)
    if isinstance(found, Gauge):
        return found
    return Gauge(name, doc, labels, registry=registry)


def histogram(name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS,
              registry: CollectorRegistry = REGISTRY) -> Histogram:
    assert name.startswith("clarion_") and name.endswith("_seconds")
    found = _existing(name, registry)
    if isinstance(found, Histogram):
        return found
    return Histogram(name, doc, labels, buckets=buckets, registry=registry)


def forget(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    """Remove one label set of `metric` (an object the labels described is gone); none: nothing."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def serve_metrics(port: int) -> None:
    """Expose /metrics on its own port (processes without an HTTP server of their own)."""
    if port:
        start_http_server(port, addr="0.0.0.0")
