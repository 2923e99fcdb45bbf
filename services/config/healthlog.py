"""``GET /health-logs``: an address's health log (failed checks, region and address changes), newest first.

The log lives in the HEALTH stream (``GTM_HEALTH_LOG_DAYS``, default 7 days), one subject per
address; a query reads the subjects its filters select from ``since`` on (default: one day
back) and keeps the newest ``limit`` entries.  At most :data:`SCAN_LIMIT` messages are read
per query: beyond that the reply says ``"truncated": true`` (narrow it with ``since``).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from services.config.errors import InvalidArgument
from services.config.views import iso, parse_limit
from shared import subjects
from shared.messages import HealthLogEntry, health_log_decoder
from shared.resources import NAME_RE

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
DEFAULT_SINCE_S = 24 * 3600
SCAN_LIMIT = 200_000
READ_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class HealthLogQuery:
    """The filters of ``GET /health-logs``."""

    pool: str = ""
    address: str = ""
    region: str = ""
    since: float = 0.0  # unix time
    limit: int = DEFAULT_LIMIT

    def matches(self, entry: HealthLogEntry) -> bool:
        """Whether ``entry`` passes the filters the subject cannot apply."""
        return entry.at >= self.since and (not self.region or entry.region == self.region)


def parse_query(query: Mapping[str, str], *, now: float | None = None) -> HealthLogQuery:
    """Validate ``pool``, ``address``, ``region``, ``since`` (RFC 3339) and ``limit``; 400 naming the parameter."""
    for name in ("pool", "address", "since", "limit"):
        if name in query and not query[name].strip():
            raise InvalidArgument(f"{name} is empty: leave it out for no filter", name)
    pool, address, region = (query.get(k, "").strip() for k in ("pool", "address", "region"))
    for name, value in (("pool", pool), ("address", address)):
        if value and not re.fullmatch(NAME_RE.strip("^$"), value):
            raise InvalidArgument(f"{name} names are 1-64 of A-Za-z0-9._-", name)
    if address and not pool:
        raise InvalidArgument("address needs its pool", "address")
    if len(region) > 64:
        raise InvalidArgument("region is at most 64 characters", "region")
    limit = parse_limit(query, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    since_text = query.get("since", "").strip()
    if since_text:
        try:
            when = datetime.datetime.fromisoformat(since_text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument(f"since must be an RFC 3339 time, not {since_text!r}", "since") from None
        if when.tzinfo is None:
            raise InvalidArgument("since needs its offset (e.g. 2026-12-01T02:00:00Z)", "since")
        since = when.timestamp()
    else:
        since = (time.time() if now is None else now) - DEFAULT_SINCE_S
    return HealthLogQuery(pool=pool, address=address, region=region, since=since, limit=limit)


def render(entry: HealthLogEntry) -> dict[str, Any]:
    """The API view of one entry: its fields, ``at`` in RFC 3339."""
    out: dict[str, Any] = msgspec.to_builtins(entry)
    out["at"] = iso(entry.at)
    return out


async def read(js: JetStreamContext, q: HealthLogQuery) -> dict[str, Any]:
    """``{"logs": [...]}`` newest first (and ``"truncated": true`` when the scan stopped early)."""
    subject = subjects.health_logs(q.pool, q.address)
    info = await js.stream_info(subjects.STREAM_HEALTH, subjects_filter=subject)
    if not info.state.subjects:
        return {"logs": []}
    kept: collections.deque[HealthLogEntry] = collections.deque(maxlen=q.limit)
    start = datetime.datetime.fromtimestamp(q.since, datetime.UTC)
    sub = await js.subscribe(
        subject,
        stream=subjects.STREAM_HEALTH,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start),
    )
    scanned, truncated = 0, False
    try:
        # Messages may be delivered before the consumer is asked about: count those as well
        consumer = await sub.consumer_info()
        pending = (consumer.num_pending or 0) + ((consumer.delivered.consumer_seq or 0) if consumer.delivered else 0)
        while pending:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            except TimeoutError:
                break  # nothing (more) since ``since``
            scanned += 1
            with contextlib.suppress(msgspec.DecodeError):
                entry = health_log_decoder.decode(msg.data)
                if q.matches(entry):
                    kept.append(entry)
            pending = msg.metadata.num_pending
            if scanned >= SCAN_LIMIT:
                truncated = True
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    body: dict[str, Any] = {"logs": [render(e) for e in reversed(kept)]}
    if truncated:
        body["truncated"] = True
    return body
