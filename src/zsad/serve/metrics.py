"""Prometheus metrics of one server (``GET /metrics``) and its readiness (``GET /readyz``).

Counters a request path must count itself (decisions by profile and label, request latency) are instrumented
where they happen; everything the service already keeps (queue, batches, models, images) is read from
``Service.stats()`` at scrape time, so there is one source for ``/v1/stats`` and ``/metrics``. Each service has its
own registry: several services in one process (tests, embedding) never share counters.

Metric names (all prefixed ``zsad_``): ``decisions_total{profile,label}``, ``request_seconds`` (histogram of
``/v1/detect`` latency), ``requests_total``, ``images_scored_total``, ``images_failed_total``, ``queue_depth``,
``worker_busy``, ``batches_total``, ``batch_images`` (histogram of the batch sizes the worker formed),
``models_kept``, ``models_built_total``, ``models_evicted_total``, ``station_inspections_recorded_total``.

Watched folders and sinks: ``watch_files_total{folder,outcome}`` (scored, error), ``watch_lag_seconds`` (histogram:
a file first seen -> its decision committed), ``watch_pending{folder}``, ``watch_folder_missing{folder}``,
``sink_deliveries_total{sink}``, ``sink_failures_total{sink}`` (failed attempts), ``sink_delivery_seconds{sink}``
(histogram: decision committed -> its sink acknowledged), ``sink_pending{sink}`` and
``sink_oldest_pending_seconds{sink}`` (from the outbox at scrape time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _FromStats(Collector):
    """What ``Service.stats()`` already counts, as metric families at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]], sinks: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats
        self.sinks = sinks

    def collect(self) -> Iterator[Any]:
        """One scrape: counters, gauges and the batch-size histogram from the service's own counts."""
        s = self.stats()
        b = s["batching"]
        for name, value, doc in (
            ("requests", s["requests"], "Scoring requests answered."),
            ("images_scored", s["images_scored"], "Images scored."),
            ("images_failed", s["images_failed"], "Uploads that could not be read (skip_bad)."),
            ("batches", b["batches"], "Forwards the model worker ran."),
            ("models_built", s["models_built"], "Prepared models built (each new class name or profile costs one)."),
            ("models_evicted", s["models_evicted"], "Prepared models dropped to stay within --max-models."),
        ):
            yield CounterMetricFamily(f"zsad_{name}", doc, value=value)
        for name, value, doc in (
            ("queue_depth", s["queue_depth"], "Jobs waiting for the model worker."),
            ("worker_busy", int(bool(s["worker_busy"])), "1 while the model worker runs a job."),
            ("models_kept", s["models_kept"], "Prepared models in memory."),
        ):
            yield GaugeMetricFamily(f"zsad_{name}", doc, value=value)
        sizes = {int(k): v for k, v in b["batch_sizes"].items()}
        buckets, running = [], 0
        for edge in BATCH_BUCKETS:
            running = sum(v for k, v in sizes.items() if k <= edge)
            buckets.append((str(edge), running))
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily(
            "zsad_batch_images", "Images per forward the worker formed.", buckets=buckets, sum_value=b["images"]
        )
        pending = GaugeMetricFamily("zsad_watch_pending", "Files seen, not yet scored.", labels=["folder"])
        missing = GaugeMetricFamily("zsad_watch_folder_missing", "1 while a watched folder is gone.", labels=["folder"])
        for w in s.get("watch", []):
            pending.add_metric([w["folder"]], w["pending"])
            missing.add_metric([w["folder"]], int(w["missing"]))
        yield pending
        yield missing
        queued = GaugeMetricFamily("zsad_sink_pending", "Events not yet acknowledged.", labels=["sink"])
        oldest = GaugeMetricFamily(
            "zsad_sink_oldest_pending_seconds", "Age of the oldest unacknowledged event.", labels=["sink"]
        )
        for name, st in self.sinks().items():
            if "pending" in st:
                queued.add_metric([name], st["pending"])
                oldest.add_metric([name], st.get("oldest_pending_s") or 0.0)
        yield queued
        yield oldest


class Metrics:
    """One server's registry: instrumented counters plus the service's stats read at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]], sinks: Callable[[], dict[str, Any]] = dict) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "zsad_decisions",
            "Image decisions by profile ('' = ad hoc request) and label (anomalous, normal, none).",
            ["profile", "label"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zsad_request_seconds", "Latency of /v1/detect.", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.recorded = Counter(
            "zsad_station_inspections_recorded",
            "Inspections written to the station's database.",
            registry=self.registry,
        )
        self.watch_files = Counter(
            "zsad_watch_files", "Watched files finished, by outcome (scored, error).", ["folder", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.watch_lag = Histogram(
            "zsad_watch_lag_seconds", "A watched file first seen -> its decision committed.", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.deliveries = Counter(
            "zsad_sink_deliveries", "Events a sink acknowledged.", ["sink"], registry=self.registry
        )
        self.delivery_failures = Counter(
            "zsad_sink_failures", "Failed delivery attempts (each retried later).", ["sink"], registry=self.registry
        )
        self.delivery = Histogram(
            "zsad_sink_delivery_seconds", "A decision committed -> its sink acknowledged the event.", ["sink"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, *LATENCY_BUCKETS[3:]), registry=self.registry,
        )  # fmt: skip
        self.registry.register(_FromStats(stats, sinks))

    def decided(self, profile: str | None, labels: list[int | None]) -> None:
        """Count one request's decisions."""
        for label in labels:
            name = "none" if label is None else "anomalous" if label else "normal"
            self.decisions.labels(profile or "", name).inc()

    def watched(self, folder: str, outcome: str) -> None:
        """Count one watched file finished."""
        self.watch_files.labels(folder, outcome).inc()

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
