"""Scheduler metrics: results, decisions, switches, publish latency, leadership."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RESULTS = Counter("gtm_scheduler_probe_results_total", "Probe results received")
DECISIONS = Counter("gtm_scheduler_published_total", "Messages published by kind", ["kind"])
SWITCHES = Counter("gtm_scheduler_switches_total", "Domain switches published")
PUBLISH_SECONDS = Histogram(
    "gtm_scheduler_publish_seconds",
    "From a decision to NATS acknowledging its publications",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
LEADER = Gauge("gtm_scheduler_leader", "1 while this scheduler holds the lease")
