"""Prober metrics: checks, failures (by an error from a fixed set) and round-trip time by region."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.prober.errors import error_label

CHECKS = Counter("gtm_prober_checks_total", "Health checks run", ["region", "protocol", "result"])
RECHECKS = Counter(
    "gtm_prober_rechecks_total", "Checks run at once because a watched connection to the target ended", ["region"]
)
FAILURES = Counter("gtm_prober_failures_total", "Failed health checks by error", ["region", "protocol", "error"])
RTT = Histogram(
    "gtm_prober_rtt_seconds",
    "Round-trip time of successful checks",
    ["region", "protocol"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def observe(region: str, protocol: str, ok: bool, rtt_ms: float | None, error: str) -> None:
    """Count one check result."""
    CHECKS.labels(region, protocol, "ok" if ok else "fail").inc()
    if ok:
        if rtt_ms is not None:
            RTT.labels(region, protocol).observe(rtt_ms / 1000)
    else:
        # Free text would grow the label set: the label is one of errors.ERROR_LABELS.
        FAILURES.labels(region, protocol, error_label(error)).inc()
