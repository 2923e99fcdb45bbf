"""Scheduler metrics: results, decisions, switches, publish latency, leadership, and availability.

Availability (pools, addresses, domains) and the prober regions heard from are read from
the scheduler's own state when Prometheus scrapes (:class:`StateCollector`): nothing is
added to the path of a probe result.  They are what was last *published* (the leader's
decisions, which a standby follows too), for the pools and domains in the config, so
leader and standby export the same values: aggregate with ``max by (pool)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.scheduler.engine import Engine

RESULTS = Counter("gtm_scheduler_probe_results_total", "Probe results received")
DECISIONS = Counter("gtm_scheduler_published_total", "Messages published by kind", ["kind"])
SWITCHES = Counter("gtm_scheduler_switches_total", "Domain switches published, by domain", ["domain"])
PUBLISH_SECONDS = Histogram(
    "gtm_scheduler_publish_seconds",
    "From a decision to NATS acknowledging its publications",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
LEADER = Gauge("gtm_scheduler_leader", "1 while this scheduler holds the lease")

MAX_REGIONS = 256  # prober regions remembered (a region is a deployment's, never a client's)


class Followed(Protocol):
    """What the collector reads: the scheduler shell (services.scheduler.service.Scheduler)."""

    engine: Engine
    config_revision: int
    region_seen: dict[str, float]  # prober region -> unix time of its last probe result


class StateCollector(Collector):
    """Availability gauges of the scheduler :func:`follow` was given (none before)."""

    def __init__(self) -> None:
        self.followed: Followed | None = None

    def collect(self) -> Iterator[Metric]:
        """Sample pools, addresses, domains and prober regions as they are now."""
        if self.followed is None:
            return
        yield from _pools(self.followed.engine)
        yield from _domains(self.followed.engine)
        yield from _regions(self.followed)
        yield GaugeMetricFamily(
            "gtm_scheduler_config_revision",
            "Highest revision of the config bucket (gtm_config) this scheduler has applied",
            value=self.followed.config_revision,
        )


def _pools(engine: Engine) -> Iterator[Metric]:
    available = GaugeMetricFamily(
        "gtm_pool_available", "1 while the pool's health condition holds (as last published)", labels=["pool"]
    )
    warming = GaugeMetricFamily(
        "gtm_pool_warming", "1 while the pool waits for the first results of its addresses", labels=["pool"]
    )
    enabled = GaugeMetricFamily("gtm_pool_enabled", "1 when the pool is enabled in the config", labels=["pool"])
    address = GaugeMetricFamily(
        "gtm_address_available",
        "1 while the address may be answered (region: where the address is, from its config)",
        labels=["pool", "address", "region"],
    )
    vantage = GaugeMetricFamily(
        "gtm_address_vantage_up",
        "The address as seen from one prober region (vantage): 1 up, 0 down (absent while unknown)",
        labels=["pool", "address", "vantage"],
    )
    for name, pool in sorted(engine.pools.items()):
        enabled.add_metric([name], 1.0 if pool.enabled else 0.0)
        state = engine.pool_states.get(name)
        if state is None:  # not decided yet
            available.add_metric([name], 0.0)
            warming.add_metric([name], 1.0)
            continue
        available.add_metric([name], 1.0 if state.available else 0.0)
        warming.add_metric([name], 1.0 if state.warming else 0.0)
        for a in state.addresses:
            address.add_metric([name, a.name, a.region], 1.0 if a.available else 0.0)
            for region, seen in sorted(a.vantages.items()):
                if seen in ("up", "down"):
                    vantage.add_metric([name, a.name, region], 1.0 if seen == "up" else 0.0)
    yield from (available, warming, enabled, address, vantage)


def _domains(engine: Engine) -> Iterator[Metric]:
    pools = GaugeMetricFamily("gtm_domain_pools", "Address pools the domain answers from", labels=["domain"])
    up = GaugeMetricFamily(
        "gtm_domain_pools_available", "The domain's address pools that are available now", labels=["domain"]
    )
    enabled = GaugeMetricFamily("gtm_domain_enabled", "1 when the domain is enabled in the config", labels=["domain"])
    fallback = GaugeMetricFamily(
        "gtm_domain_fallback", "1 while the domain's published answer is its fallback (no pool up)", labels=["domain"]
    )
    for name, (domain, _) in sorted(engine.domains.items()):
        refs = {ref.pool for ref in domain.pools}
        pools.add_metric([name], float(len(refs)))
        states = [engine.pool_states.get(p) for p in refs]
        up.add_metric([name], float(sum(1 for s in states if s is not None and s.available)))
        enabled.add_metric([name], 1.0 if domain.enabled else 0.0)
        answer = engine.answers.get(name)
        fallback.add_metric([name], 1.0 if answer is not None and answer.fallback else 0.0)
    yield from (pools, up, enabled, fallback)


def _regions(followed: Followed) -> Iterator[Metric]:
    counts: dict[str, int] = dict.fromkeys(followed.region_seen, 0)
    for tracked in followed.engine.addresses.values():
        for region in tracked.vantages:  # vantages that stop reporting expire (after ~3 intervals)
            counts[region] = counts.get(region, 0) + 1
    addresses = GaugeMetricFamily(
        "gtm_scheduler_region_addresses",
        "Addresses with a live result from this prober region (0: the region has gone silent)",
        labels=["region"],
    )
    last = GaugeMetricFamily(
        "gtm_scheduler_region_last_result_timestamp_seconds",
        "Unix time of the last probe result received from this prober region",
        labels=["region"],
    )
    for region in sorted(counts):
        addresses.add_metric([region], float(counts[region]))
        if region in followed.region_seen:
            last.add_metric([region], followed.region_seen[region])
    yield from (addresses, last)


STATE = StateCollector()
REGISTRY.register(STATE)


def follow(scheduler: Followed) -> None:
    """Export the availability gauges of ``scheduler`` (the process's one scheduler)."""
    STATE.followed = scheduler


def result_from(followed: Followed, region: str, at: float) -> None:
    """Remember that ``region`` reported at ``at`` (at most :data:`MAX_REGIONS` regions)."""
    seen = followed.region_seen
    if region in seen or len(seen) < MAX_REGIONS:
        seen[region] = at
