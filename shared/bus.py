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
    """Create (or update) the streams every service relies on."""
    for cfg in STREAMS:
        try:
            await js.add_stream(cfg)
        except BadRequestError:
            await js.update_stream(cfg)


async def config_bucket(js: JetStreamContext) -> KeyValue:
    """The ``gtm_config`` KV bucket, created if missing."""
    try:
        return await js.key_value(subjects.CONFIG_BUCKET)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(
            KeyValueConfig(bucket=subjects.CONFIG_BUCKET, history=10, storage=StorageType.FILE)
        )
