"""NATS helpers: connect with endless reconnects, declare streams and buckets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from shared import subjects
from shared.settings import NatsSettings

log = structlog.get_logger(__name__)

EVENTS_MAX_AGE_S = 90 * 24 * 3600

STREAMS = (
    StreamConfig(
        name=subjects.STREAM_ANSWERS,
        subjects=[subjects.ANSWERS_ALL],
        max_msgs_per_subject=1,
        storage=StorageType.FILE,
        allow_direct=True,
    ),
    StreamConfig(
        name=subjects.STREAM_POOL_STATE,
        subjects=[subjects.POOL_STATE_ALL],
        max_msgs_per_subject=1,
        storage=StorageType.FILE,
        allow_direct=True,
    ),
    StreamConfig(
        name=subjects.STREAM_EVENTS,
        subjects=[subjects.EVENTS_ALL],
        max_age=EVENTS_MAX_AGE_S,
        storage=StorageType.FILE,
        allow_direct=True,
    ),
)


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

    opts: dict[str, Any] = {
        "servers": [u.strip() for u in settings.url.split(",") if u.strip()],
        "name": settings.name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
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
    return await nats.connect(**opts)


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


async def ensure_streams(js: JetStreamContext) -> None:
    """Create or update the streams every service relies on; leave those that already match alone.

    A least-privileged service user may not manage streams: when it is refused (or the server
    rejects the change) and the stream exists, warn and go on with the stream as it is.
    """
    defaults = vars(StreamConfig())

    def matches(have: StreamConfig, want: StreamConfig) -> bool:
        for field, value in vars(want).items():
            if value is None or value == defaults.get(field):
                continue  # not chosen by us: the server's own default is fine
            got = getattr(have, field, None)
            if field == "subjects":
                same = sorted(got or []) == sorted(value)
            elif isinstance(value, float | int) and isinstance(got, float | int):
                same = abs(got - value) < 1e-3
            else:
                same = got == value
            if not same:
                return False
        return True

    for cfg in STREAMS:
        assert cfg.name is not None
        info = None
        for attempt in range(2):  # a second look when someone else created it meanwhile
            with contextlib.suppress(NotFoundError):
                info = await js.stream_info(cfg.name)
            if info is not None and matches(info.config, cfg):
                break
            try:
                await (js.add_stream(cfg) if info is None else js.update_stream(cfg))
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


async def config_bucket(js: JetStreamContext) -> KeyValue:
    """The ``gtm_config`` KV bucket, created if missing (when this NATS user may create it)."""
    try:
        return await js.key_value(subjects.CONFIG_BUCKET)
    except (NotFoundError, BadRequestError):
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=subjects.CONFIG_BUCKET, history=10, storage=StorageType.FILE)
        )
    except nats.errors.Error as exc:  # refused (timeout), or created meanwhile by someone else
        try:
            return await js.key_value(subjects.CONFIG_BUCKET)
        except (NotFoundError, BadRequestError):
            log.error(
                "bucket_missing",
                bucket=subjects.CONFIG_BUCKET,
                error=str(exc) or type(exc).__name__,
                hint="create it as the NATS admin: python -m shared.bus --init",
            )
            raise exc from None


if __name__ == "__main__":
    # ``python -m shared.bus --init``: declare the streams and buckets as a NATS user allowed to
    # (the admin), so that the services themselves can run with least privilege.
    import argparse
    import sys

    # the lease bucket keeps its one definition, in the scheduler
    from services.scheduler.lease import leases_bucket
    from shared import logs
    from shared.settings import from_env

    async def _init() -> None:
        settings = from_env("admin")
        logs.configure(service="nats-init", level=settings.log_level, fmt=settings.log_format)
        nc = await connect(settings.nats, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await config_bucket(js)
            await leases_bucket(js)
        finally:
            await close(nc)
        log.info(
            "streams_ready",
            streams=[c.name for c in STREAMS],
            buckets=[subjects.CONFIG_BUCKET, subjects.LEASES_BUCKET],
        )

    parser = argparse.ArgumentParser(prog="python -m shared.bus", description=__doc__)
    parser.add_argument("--init", action="store_true", help="create or update every stream and bucket")
    if not parser.parse_args().init:
        parser.print_help()
        sys.exit(2)
    asyncio.run(_init())
