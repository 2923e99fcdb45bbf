"""NATS helpers: connect with endless reconnects, declare streams and buckets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from shared import ops, subjects
from shared.settings import NatsSettings

log = structlog.get_logger(__name__)

EVENTS_MAX_AGE_S = 90 * 24 * 3600

def _stream(name: str, subject: str, **limits: Any) -> StreamConfig:
    return StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE, allow_direct=True, **limits)


DAY_S = 24 * 3600
HEALTH_LOG_MAX_BYTES = 1 << 30  # the health log's cap whatever its age (1 GiB: the oldest entries go first)


def streams(health_log_days: int = NatsSettings().health_log_days) -> tuple[StreamConfig, ...]:
    """Every stream GTM uses (the HEALTH stream keeping ``health_log_days`` of health log)."""
    return (
        _stream(subjects.STREAM_ANSWERS, subjects.ANSWERS_ALL, max_msgs_per_subject=1),  # the last answer per domain
        _stream(subjects.STREAM_POOL_STATE, subjects.POOL_STATE_ALL, max_msgs_per_subject=1),
        _stream(subjects.STREAM_EVENTS, subjects.EVENTS_ALL, max_age=EVENTS_MAX_AGE_S),
        _stream(subjects.STREAM_HEALTH, subjects.HEALTH_ALL, max_age=health_log_days * DAY_S,
                max_bytes=HEALTH_LOG_MAX_BYTES),
    )


STREAMS = streams()

CLUSTER_REPLICAS = 3  # the replica count on a cluster of this many servers or more
RESUME_STEP_S = 0.1
RESUME_LIMIT_S = 30.0


def replicas(nc: Client, settings: NatsSettings | None = None) -> int:
    """How many replicas streams and buckets get: the setting, else 3 on a cluster of 3 or more, else 1."""
    if settings is not None and settings.replicas:
        return settings.replicas
    # The server pool holds the configured URLs and every client URL the cluster advertised.
    servers = {u.netloc for u in nc.servers}
    return CLUSTER_REPLICAS if len(servers) >= CLUSTER_REPLICAS else 1


def _replicas_of(js: JetStreamContext, given: int | None) -> int:
    # A caller without the settings at hand gets the automatic count of its connection.
    return given if given is not None else replicas(js._nc)


async def connect(settings: NatsSettings, **kwargs: Any) -> Client:
    """Connect to NATS and keep reconnecting for ever."""

    last_error: dict[str, float] = {}

    async def on_error(exc: Exception) -> None:
        # While NATS is down the client fails every reconnect: say so once per message and minute.
        now, text = time.monotonic(), str(exc)
        if now - last_error.get(text, -1e9) > 60:
            log.warning("nats_error", error=text)
            last_error.clear()
            last_error[text] = now

    async def on_disconnect() -> None:
        log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")
        resume = asyncio.ensure_future(resume_consumers(nc))
        _background.add(resume)
        resume.add_done_callback(_background.discard)

    opts: dict[str, Any] = {
        "servers": [u.strip() for u in settings.url.split(",") if u.strip()],
        "name": settings.name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        # A partition closes no socket: without our own PINGs (nats.py's default: every 2 min) a dead
        # link goes unnoticed for minutes and TCP's retransmission backoff delays the heal.  With one
        # per second a dead link is noticed within 3 s, and a reconnect attempt started during a cut
        # gives up soon enough for the one after the heal to come within a second (TLS needs longer).
        "ping_interval": 1,
        "max_outstanding_pings": 2,
        "connect_timeout": 2 if settings.tls_ca or settings.tls_cert else 0.5,
        "allow_reconnect": True,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    if settings.user:
        opts["user"], opts["password"] = settings.user, settings.password
    if settings.creds:
        opts["user_credentials"] = settings.creds
    if settings.tls_ca or settings.tls_cert:
        ctx = ssl.create_default_context(cafile=settings.tls_ca or None)
        if settings.tls_cert:
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key or None)
        opts["tls"] = ctx
    opts.update(kwargs)
    nc = await nats.connect(**opts)
    return nc


_background: set[asyncio.Future[None]] = set()


DELETE_OPS = (KV_DEL, KV_PURGE)  # a KV entry's ``operation`` when it says the key is gone


def is_delete(headers: dict[str, str] | None) -> bool:
    """Whether a KV stream message is a delete or purge marker (nats.py's operation headers)."""
    headers = headers or {}
    return headers.get(KV_OP) in DELETE_OPS or KV_MARKER_REASON in headers


async def unsubscribe(sub: Any) -> None:
    """Unsubscribe ``sub`` if there is one (best effort: NATS may be away)."""
    if sub is None:
        return
    try:
        await sub.unsubscribe()
    except Exception as exc:  # noqa: BLE001 - shutting down anyway
        log.debug("unsubscribe_failed", error=str(exc))


def _ordered_subscriptions(nc: Client) -> list[Any]:
    # nats.py keeps an ordered consumer's state on the core subscription (``_jsi``); it has no
    # public way to ask for a resume, so this is the one place that reaches into it.
    subs: list[Any] = list(nc._subs.values())
    return [sub for sub in subs if getattr(sub, "_jsi", None) is not None and sub._jsi._ordered]


async def resume_consumers(nc: Client) -> None:
    """Recreate every ordered consumer (KV watchers, stream followers) of ``nc`` right after a reconnect.

    nats.py notices a lost consumer only after two missed idle heartbeats (10 s for a KV
    watcher) and tries to recreate it once per such period; a restarted server forgets every
    ephemeral consumer, and its JetStream may need a moment before it accepts new ones.  Here
    each one is recreated from the last stream sequence it delivered, retried every
    ``RESUME_STEP_S`` until the server accepts it.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = _ordered_subscriptions(nc)
    total = len(pending)
    while pending and nc.is_connected and loop.time() - started < RESUME_LIMIT_S:
        before = {}
        for sub in pending:
            jsi = sub._jsi
            before[sub] = jsi._psub._consumer
            with contextlib.suppress(Exception):
                await jsi.reset_ordered_consumer(jsi._sseq + 1)
        await asyncio.sleep(RESUME_STEP_S)
        still = []
        for sub in pending:
            psub = sub._jsi._psub
            try:
                if psub._consumer == before[sub]:
                    raise LookupError("not recreated yet")
                await asyncio.wait_for(psub.consumer_info(), RESUME_STEP_S * 5)
            except Exception:  # noqa: BLE001 - not recreated yet (JetStream still recovering)
                still.append(sub)
        pending = [s for s in still if s._id in nc._subs]  # unsubscribed meanwhile: forget it
    if total:
        log.info(
            "consumers_resumed" if not pending else "consumers_not_resumed",
            consumers=total - len(pending),
            failed=len(pending),
            seconds=round(loop.time() - started, 3),
        )


async def close(nc: Client, *, timeout_s: float = 2.0) -> None:
    """Drain ``nc``; if that cannot finish (NATS gone), close it. Never raises."""
    if nc.is_closed:
        return
    try:
        if nc.is_connected:
            await asyncio.wait_for(nc.drain(), timeout_s)
    except Exception as exc:  # noqa: BLE001 - closing anyway
        log.debug("nats_drain_failed", error=repr(exc))
    finally:
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()


class Session:
    """One service's NATS: connection, JetStream, streams and the config bucket; use ``async with``.

    :meth:`open` connects (once), watches the connection for ``gtm_nats_connected``, declares
    the streams and opens the config bucket.  It may be called again after it failed part-way
    (JetStream not ready yet): the connection is kept and only the rest is tried again.
    """

    def __init__(self, settings: NatsSettings, *, js_timeout_s: float = 5.0, close_timeout_s: float = 2.0) -> None:
        self.settings = settings
        self._js_timeout_s, self._close_timeout_s = js_timeout_s, close_timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._config: KeyValue | None = None
        self.replicas = 1

    async def open(self, **connect_kwargs: Any) -> Session:
        """Connect (if not yet), declare the streams, open the config bucket."""
        if self._nc is None:
            self._nc = await connect(self.settings, **connect_kwargs)
            ops.watch_nats(self._nc)
        if self._config is None:
            js = self._nc.jetstream(timeout=self._js_timeout_s)
            self.replicas = replicas(self._nc, self.settings)
            await ensure_streams(js, replicas=self.replicas, health_log_days=self.settings.health_log_days)
            self._config = await config_bucket(js, replicas=self.replicas)
            self._js = js
        return self

    @property
    def nc(self) -> Client:
        """The connection (open first)."""
        if self._nc is None:
            raise RuntimeError("the NATS session is not open")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (open first)."""
        if self._js is None:
            raise RuntimeError("the NATS session is not open")
        return self._js

    @property
    def config(self) -> KeyValue:
        """The ``gtm_config`` bucket (open first)."""
        if self._config is None:
            raise RuntimeError("the NATS session is not open")
        return self._config

    async def leases(self) -> KeyValue:
        """The ``gtm_leases`` bucket, with this session's replica count."""
        return await leases_bucket(self.js, replicas=self.replicas)

    async def close(self) -> None:
        """Drain and close the connection (never raises); the session may be opened again."""
        nc, self._nc, self._js, self._config = self._nc, None, None, None
        if nc is not None:
            await close(nc, timeout_s=self._close_timeout_s)

    async def __aenter__(self) -> Session:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _with_replicas(cfg: StreamConfig, replicas: int) -> StreamConfig:
    return dataclasses.replace(cfg, num_replicas=replicas)


def _matches(have: StreamConfig, want: StreamConfig) -> bool:
    """Whether ``have`` already has every setting that ``want`` chooses (replicas: at least as many)."""
    defaults = vars(StreamConfig())
    for field, value in vars(want).items():
        if value is None or value == defaults.get(field):
            continue  # not chosen by us: the server's own default is fine
        got = getattr(have, field, None)
        if field == "subjects":
            same = sorted(got or []) == sorted(value)
        elif field == "num_replicas":
            same = (got or 1) >= value  # never lowered: an operator may have raised it
        elif isinstance(value, float | int) and isinstance(got, float | int):
            same = abs(got - value) < 1e-3
        else:
            same = got == value
        if not same:
            return False
    return True


async def ensure_streams(
    js: JetStreamContext, *, replicas: int | None = None, health_log_days: int = NatsSettings().health_log_days
) -> None:
    """Create or update the streams every service relies on; leave those that already match alone.

    ``replicas`` (default: :func:`replicas` of the connection) is given to new streams, and
    existing ones with fewer are raised to it (never lowered).
    A least-privileged service user may not manage streams: when it is refused (or the server
    rejects the change) and the stream exists, warn and go on with the stream as it is.
    """
    count = _replicas_of(js, replicas)
    for base in streams(health_log_days):
        cfg = _with_replicas(base, count)
        assert cfg.name is not None
        info = None
        for attempt in range(2):  # a second look when someone else created it meanwhile
            with contextlib.suppress(NotFoundError):
                info = await js.stream_info(cfg.name)
            if info is not None and _matches(info.config, cfg):
                break
            try:
                if info is None:
                    await js.add_stream(cfg)
                else:
                    await js.update_stream(_merged(info.config, cfg))
                    _log_raised(info.config, cfg)
                break
            except nats.errors.Error as exc:  # refused (timeout), or rejected (APIError)
                if info is None and attempt == 0:
                    continue
                if info is None:
                    log.error("stream_missing", stream=cfg.name, error=str(exc) or type(exc).__name__)
                    raise
                log.warning(
                    "stream_not_updated",
                    stream=cfg.name,
                    error=str(exc) or type(exc).__name__,
                    hint="declare it as the NATS admin: python -m shared.bus --init",
                )
                break


def _merged(have: StreamConfig, want: StreamConfig) -> StreamConfig:
    """``have`` with the settings that ``want`` chooses (so an update keeps what others set)."""
    defaults = vars(StreamConfig())
    chosen = {f: v for f, v in vars(want).items() if v is not None and v != defaults.get(f)}
    if (have.num_replicas or 1) > (want.num_replicas or 1):
        chosen.pop("num_replicas", None)
    return dataclasses.replace(have, **chosen)


def _log_raised(have: StreamConfig, want: StreamConfig) -> None:
    if want.num_replicas and (have.num_replicas or 1) < want.num_replicas:
        log.info("replicas_raised", stream=want.name, before=have.num_replicas or 1, after=want.num_replicas)


async def _bucket(js: JetStreamContext, bucket: str, history: int, replicas: int | None) -> KeyValue:
    """KV bucket ``bucket``: opened, created if missing, raised to ``replicas`` when it has fewer."""
    count = _replicas_of(js, replicas)
    try:
        kv = await js.key_value(bucket)
    except (NotFoundError, BadRequestError):
        pass
    else:
        await _raise_bucket(js, bucket, count)
        return kv
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE, replicas=count)
        )
    except nats.errors.Error as exc:  # refused (timeout), or created meanwhile by someone else
        try:
            return await js.key_value(bucket)
        except (NotFoundError, BadRequestError):
            log.error(
                "bucket_missing",
                bucket=bucket,
                error=str(exc) or type(exc).__name__,
                hint="create it as the NATS admin: python -m shared.bus --init",
            )
            raise exc from None


async def _raise_bucket(js: JetStreamContext, bucket: str, replicas: int) -> None:
    """Give an existing bucket's stream ``replicas`` when it has fewer (warn when not allowed to)."""
    stream = subjects.kv_stream(bucket)
    try:
        info = await js.stream_info(stream)
        if (info.config.num_replicas or 1) >= replicas:
            return
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
        log.info("replicas_raised", stream=stream, before=info.config.num_replicas or 1, after=replicas)
    except nats.errors.Error as exc:
        log.warning(
            "stream_not_updated",
            stream=stream,
            error=str(exc) or type(exc).__name__,
            hint="declare it as the NATS admin: python -m shared.bus --init",
        )


async def config_bucket(js: JetStreamContext, *, replicas: int | None = None) -> KeyValue:
    """The ``gtm_config`` KV bucket, created if missing (when this NATS user may create it)."""
    return await _bucket(js, subjects.CONFIG_BUCKET, 10, replicas)


async def leases_bucket(js: JetStreamContext, *, replicas: int | None = None) -> KeyValue:
    """The ``gtm_leases`` KV bucket (the scheduler's leader lease), created if missing."""
    return await _bucket(js, subjects.LEASES_BUCKET, 1, replicas)


if __name__ == "__main__":
    # ``python -m shared.bus --init``: declare the streams and buckets as a NATS user allowed to
    # (the admin), so that the services themselves can run with least privilege.
    import argparse
    import sys

    from shared import logs
    from shared.settings import load

    async def _init() -> None:
        settings = load("admin")
        logs.configure(service="nats-init", level=settings.log.level, fmt=settings.log.format)
        session = Session(settings.nats)
        try:
            await session.open(max_reconnect_attempts=0, allow_reconnect=False)
            await session.leases()
        finally:
            await session.close()
        log.info(
            "streams_ready",
            streams=[c.name for c in STREAMS],
            buckets=[subjects.CONFIG_BUCKET, subjects.LEASES_BUCKET],
            replicas=session.replicas,
        )

    parser = argparse.ArgumentParser(prog="python -m shared.bus", description=__doc__)
    parser.add_argument("--init", action="store_true", help="create or update every stream and bucket")
    if not parser.parse_args().init:
        parser.print_help()
        sys.exit(2)
    asyncio.run(_init())
