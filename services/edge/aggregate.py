"""Fold the /metrics of several edge workers into the exposition of one target (pure).

Counters, histograms and summaries add up; so do the gauges that are a share of a total
(memory, open descriptors).  ``*_created`` and start times take the earliest, NATS'
connection state the lowest (one disconnected worker says "disconnected"), every other
gauge the highest (the oldest snapshot, any worker serving from disk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

SUMMED = frozenset({"counter", "histogram", "summary", "gaugehistogram", "unknown", "untyped"})
SUMMED_GAUGES = frozenset({"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds"})
LOWEST_GAUGES = frozenset({"gtm_nats_connected", "process_start_time_seconds"})

Key = tuple[str, tuple[tuple[str, str], ...]]


def _combine(family: Metric) -> Callable[[float, float], float]:
    if family.name.endswith("_created") or family.name in LOWEST_GAUGES:
        return min
    if family.type in SUMMED or family.name in SUMMED_GAUGES:
        return lambda a, b: a + b
    return max


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge(texts: Iterable[str], *, extra: Iterable[Metric] = ()) -> bytes:
    """One Prometheus text exposition of every sample of ``texts`` folded together, then ``extra``."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[Key, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            known = families.setdefault(family.name, family)
            combine = _combine(known)
            samples = values.setdefault(family.name, {})
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                samples[key] = combine(samples[key], s.value) if key in samples else s.value
    out: list[Metric] = []
    for name, family in families.items():
        merged = Metric(family.name, family.documentation, family.type, family.unit)
        merged.samples = [Sample(n, dict(labels), v) for (n, labels), v in values[name].items()]
        out.append(merged)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*out, *extra]))
    return generate_latest(registry)


def workers_gauge(workers: int) -> GaugeMetricFamily:
    """``gtm_edge_workers``: how many worker processes the target adds up."""
    return GaugeMetricFamily("gtm_edge_workers", "Edge worker processes added up in this target", value=workers)
