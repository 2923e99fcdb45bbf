"""Edge metrics: queries by domain, type and rcode; sampled answer latency; rate-limited replies.

The per-query cost must stay near zero, so the responder only bumps a plain
dict keyed by the question bytes it already has; names, types and labels are
worked out when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import Histogram
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.edge import wire
from services.edge.table import AnswerTable
from services.edge.wire import QType, Rcode

LATENCY_SAMPLE = 64  # time one query in 64: two clock reads per query would cost more than the count

ANSWER_SECONDS = Histogram(
    "gtm_edge_answer_seconds",
    "Time to build and send one reply (one query in 64 is timed)",
    ["transport"],
    buckets=(0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025),
)

# The query types counted under their own name; any other is "other", so no query can grow the label set.
_LABELLED_TYPES = (QType.A, QType.NS, QType.CNAME, QType.SOA, QType.MX, QType.TXT, QType.AAAA, QType.HTTPS, QType.ANY)
_TYPE_LABELS = {int(t): t.name for t in _LABELLED_TYPES}
_RCODE_LABELS = {int(r): r.name for r in Rcode}


class QueryCounts:
    """Counters the responder bumps: positive fast-path answers and everything else."""

    __slots__ = ("fast", "folds", "other")

    def __init__(self) -> None:
        self.fast: dict[bytes, int] = {}  # lower-cased question bytes -> count (all NOERROR)
        self.other: dict[tuple[bytes, int], int] = {}  # (question bytes or b"", rcode) -> count
        self.folds: list[Callable[[], None]] = []  # what moves counts kept elsewhere (reply caches) into ``fast``

    def settle(self) -> None:
        """Bring in the counts kept elsewhere, before they are read."""
        for fold in self.folds:
            fold()

    def count_reply(self, reply: bytes) -> None:
        """Count a reply of the slow path by its question and rcode (read back from the reply)."""
        rcode = reply[3] & 0x0F
        question = _question(reply) if reply[4:6] == b"\x00\x01" else b""
        key = (question.lower(), rcode)
        self.other[key] = self.other.get(key, 0) + 1


class Serving:
    """Where the answers being served come from: nothing yet, a disk snapshot, or NATS (live)."""

    __slots__ = ("source", "written_at")

    SOURCES = ("disk", "live")

    def __init__(self) -> None:
        self.source = ""  # "" until the edge answers, then "disk" or "live"
        self.written_at = 0.0  # unix time the disk snapshot served was written

    def ready(self) -> bool:
        """Whether the edge answers (from disk or live): a load balancer should send it queries."""
        return bool(self.source)

    def detail(self) -> dict[str, str]:
        """What ``/readyz`` adds to its body: where the answers come from."""
        return {"source": self.source} if self.source else {}

    def age_s(self) -> float:
        """Seconds since the disk snapshot served was written (0 when serving live data)."""
        return max(0.0, time.time() - self.written_at) if self.source == "disk" else 0.0


class RrlCounts:
    """UDP replies the response rate limiter held back: dropped, or sent truncated (slipped)."""

    __slots__ = ("drop", "slip")

    def __init__(self) -> None:
        self.drop = 0
        self.slip = 0


def _question(reply: bytes) -> bytes:
    i = 12
    try:
        while reply[i]:
            i += reply[i] + 1
    except IndexError:
        return b""
    return reply[12 : i + 5]


def _decode(question: bytes) -> tuple[bytes, str]:
    """(wire name, type label) of a question."""
    if len(question) < 5:
        return b"", "none"
    qtype = int.from_bytes(question[-4:-2], "big")
    return question[:-4], _TYPE_LABELS.get(qtype, "other")


def _domain(table: AnswerTable, wire_name: bytes) -> str:
    """The access domain a name is, or "other" (unknown names must not grow the label set)."""
    return wire.wire_to_text(wire_name) if wire_name in table.names else "other"


class EdgeCollector(Collector):
    """Exports ``gtm_edge_queries_total{domain,type,rcode}``, ``gtm_edge_rrl_total{action}``, ``gtm_edge_domains``
    and the answers' source and age."""

    def __init__(
        self, counts: QueryCounts, table: AnswerTable, rrl: RrlCounts | None = None, serving: Serving | None = None
    ) -> None:
        self.counts, self.table = counts, table
        self.rrl = rrl if rrl is not None else RrlCounts()
        self.serving = serving

    def collect(self) -> Iterator[Metric]:
        """Fold the raw counters into labelled samples."""
        totals: dict[tuple[str, str, str], int] = {}
        self.counts.settle()
        rows = [(q, 0, n) for q, n in list(self.counts.fast.items())]
        rows += [(q, rc, n) for (q, rc), n in list(self.counts.other.items())]
        for question, rcode, n in rows:
            name, qtype = _decode(question)
            key = (_domain(self.table, name), qtype, _RCODE_LABELS.get(rcode, str(rcode)))
            totals[key] = totals.get(key, 0) + n
        family = CounterMetricFamily("gtm_edge_queries", "DNS queries answered", labels=["domain", "type", "rcode"])
        for labels, n in sorted(totals.items()):
            family.add_metric(list(labels), n)
        yield family
        rrl = CounterMetricFamily("gtm_edge_rrl", "UDP replies held back by rate limiting", labels=["action"])
        rrl.add_metric(["drop"], self.rrl.drop)
        rrl.add_metric(["slip"], self.rrl.slip)
        yield rrl
        yield GaugeMetricFamily("gtm_edge_domains", "Access domains this edge answers for", value=len(self.table))
        if self.serving is not None:
            yield from _source_metrics(self.serving)


def _source_metrics(serving: Serving) -> Iterator[Metric]:
    """``gtm_edge_answers_source{source}`` (1 for the one served) and ``gtm_edge_snapshot_age_seconds``."""
    source = GaugeMetricFamily(
        "gtm_edge_answers_source", "1 for where the answers served come from: disk snapshot or NATS", labels=["source"]
    )
    for name in Serving.SOURCES:
        source.add_metric([name], 1.0 if serving.source == name else 0.0)
    yield source
    yield GaugeMetricFamily(
        "gtm_edge_snapshot_age_seconds",
        "Age of the disk snapshot being served (0 while serving live data from NATS)",
        value=serving.age_s(),
    )


def register_collector(
    counts: QueryCounts, table: AnswerTable, rrl: RrlCounts | None = None, serving: Serving | None = None
) -> None:
    """Export ``counts`` (and ``rrl``, ``serving``) in the default registry (once per process)."""
    REGISTRY.register(EdgeCollector(counts, table, rrl, serving))
