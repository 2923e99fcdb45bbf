"""The config store: resources in the ``gtm_config`` KV bucket, validated, with an operation log."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.config.documents import (
    DOMAIN,
    POOL,
    Kind,
    Resource,
    check_preconditions,
    decode,
    document,
    merge_patch,
    parse_json,
    pop_revision,
)
from services.config.errors import ApiError, Conflict, InvalidArgument, NotFound, from_resource_error
from shared import subjects
from shared.messages import OperationEvent, encoder
from shared.resources import Domain, Pool, ResourceError, validate_domain, validate_pool

log = structlog.get_logger(__name__)

_WRONG_LAST_SEQUENCE = (10071, 10164)
_SCAN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Stored:
    """A resource as stored, with its KV revision."""

    name: str
    resource: Resource
    revision: int


class ConfigStore:
    """Reads and validated writes of pools and domains; every accepted write is logged as an event."""

    def __init__(
        self,
        kv: KeyValue,
        js: JetStreamContext,
        *,
        on_event: Callable[[int, OperationEvent], None] = lambda seq, ev: None,
    ) -> None:
        self.kv = kv
        self.js = js
        self.on_event = on_event
        self._lock = asyncio.Lock()

    # -- reads -----------------------------------------------------------------

    async def find(self, kind: Kind, name: str) -> Stored | None:
        """The stored resource called ``name`` (canonical), or None."""
        try:
            entry = await self.kv.get(kind.key(name))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Stored(name, self._decode_stored(kind, name, entry.value), entry.revision)

    async def get(self, kind: Kind, name: str) -> Stored:
        """The stored resource called ``name`` (as in a URL); raise ``not_found``."""
        name = kind.canonical(name)
        found = await self.find(kind, name)
        if found is None:
            raise _not_found(kind, name)
        return found

    async def list_all(self, kind: Kind) -> list[Stored]:
        """Every stored resource of ``kind``, sorted by name."""
        watcher: Any = await self.kv.watch(f"{kind.prefix}>", ignore_deletes=True)  # nats.py is untyped here
        out: list[Stored] = []
        try:
            while (entry := await watcher.updates(timeout=_SCAN_TIMEOUT_S)) is not None:
                if entry.value and entry.revision is not None:
                    _, name = subjects.parse_config_key(entry.key)
                    with contextlib.suppress(ApiError):  # unreadable: logged, left out of lists
                        out.append(Stored(name, self._decode_stored(kind, name, entry.value), entry.revision))
        finally:
            await watcher.stop()
        return sorted(out, key=lambda s: s.name)

    async def domains_using(self, pool: str) -> list[str]:
        """Names of the domains that use ``pool``."""
        return [
            s.name
            for s in await self.list_all(DOMAIN)
            if isinstance(s.resource, Domain) and any(ref.pool == pool for ref in s.resource.pools)
        ]

    # -- writes ----------------------------------------------------------------

    async def put(self, kind: Kind, name: str, body: bytes, *, if_match: str | None) -> tuple[Stored, bool]:
        """Create or replace a resource; return it and whether it was created."""
        name = kind.canonical(name)
        incoming = decode(kind, body)
        async with self._lock:
            current = await self.find(kind, name)
            check_preconditions(
                if_match=if_match,
                body_revision=incoming.revision,
                current=current.revision if current else None,
                what=_what(kind, name),
                must_exist=False,
            )
            stored = await self._write(kind, name, incoming, current, "PUT")
        return stored, current is None

    async def patch(self, kind: Kind, name: str, body: bytes, *, if_match: str | None) -> Stored:
        """Apply a JSON merge-patch to a resource and validate the result."""
        name = kind.canonical(name)
        patch = parse_json(body)
        body_revision = pop_revision(patch)
        async with self._lock:
            current = await self.find(kind, name)
            check_preconditions(
                if_match=if_match,
                body_revision=body_revision,
                current=current.revision if current else None,
                what=_what(kind, name),
                must_exist=True,
            )
            assert current is not None
            merged = merge_patch(document(current.resource), patch)
            incoming = decode(kind, msgspec.json.encode(merged))
            return await self._write(kind, name, incoming, current, "PATCH")

    async def delete(self, kind: Kind, name: str, *, if_match: str | None) -> int:
        """Delete a resource (409 for a pool in use); return the delete marker's revision."""
        name = kind.canonical(name)
        async with self._lock:
            current = await self.find(kind, name)
            check_preconditions(
                if_match=if_match,
                body_revision=None,
                current=current.revision if current else None,
                what=_what(kind, name),
                must_exist=True,
            )
            assert current is not None
            if kind is POOL and (users := await self.domains_using(name)):
                raise Conflict(f"pool {name!r} is used by {_names(users)}; remove it from there first")
            try:
                await self.kv.delete(kind.key(name), last=current.revision)
            except APIError as exc:
                if exc.err_code in _WRONG_LAST_SEQUENCE:
                    raise _concurrent(kind, name) from None
                raise
            revision = await self._marker_revision(kind, name)
            await self._record(kind, name, "DELETE", revision)
        return revision

    # -- internals -------------------------------------------------------------

    async def _write(self, kind: Kind, name: str, incoming: Resource, current: Stored | None, method: str) -> Stored:
        """Validate and store ``incoming`` over ``current``; log the operation."""
        validated = await self._validate(kind, name, incoming, current)
        data = encoder.encode(validated)
        key = kind.key(name)
        try:
            if current is None:
                revision = await self.kv.create(key, data)
            else:
                revision = await self.kv.update(key, data, last=current.revision)
        except KeyWrongLastSequenceError:
            raise _concurrent(kind, name) from None
        await self._record(kind, name, method, revision)
        return Stored(name, validated, revision)

    async def _validate(self, kind: Kind, name: str, incoming: Resource, current: Stored | None) -> Resource:
        try:
            if isinstance(incoming, Pool):
                pool = validate_pool(incoming, name)
                if current is not None and isinstance(current.resource, Pool) and current.resource.type != pool.type:
                    if users := await self.domains_using(name):
                        raise InvalidArgument(
                            f"pool {name!r} is used by {_names(users)}; its type cannot change", "type"
                        )
                return pool
            assert isinstance(incoming, Domain)
            pools: dict[str, Pool] = {}
            for ref in incoming.pools:
                found = await self.find(POOL, ref.pool)
                if found is not None and isinstance(found.resource, Pool):
                    pools[ref.pool] = found.resource
            return validate_domain(incoming, name, pools)
        except ResourceError as exc:
            raise from_resource_error(exc) from None

    async def _marker_revision(self, kind: Kind, name: str) -> int:
        try:
            await self.kv.get(kind.key(name))
        except KeyNotFoundError as exc:
            entry: Any = exc.entry
            if entry is not None and entry.revision is not None:
                return int(entry.revision)
        return 0

    async def _record(self, kind: Kind, name: str, method: str, revision: int) -> None:
        """Publish the operation event of an accepted write (a failure is logged, not raised)."""
        path = kind.path(name)
        event = OperationEvent(
            at=time.time(),
            method=method,
            path=path,
            resource=kind.resource,
            name=name,
            revision=revision,
            domain=name if kind is DOMAIN else "",
            message=f"{method} {path}",
        )
        try:
            ack = await self.js.publish(subjects.operation_event(kind.resource, name), encoder.encode(event))
        except Exception as exc:  # noqa: BLE001 - the write itself succeeded
            log.error("operation_event_not_published", resource=kind.resource, name=name, error=repr(exc))
            return
        self.on_event(ack.seq, event)
        log.info("config_changed", method=method, resource=kind.resource, name=name, revision=revision)

    def _decode_stored(self, kind: Kind, name: str, value: bytes) -> Resource:
        try:
            resource: Resource = kind.decoder.decode(value)
        except msgspec.DecodeError as exc:
            log.error("stored_resource_unreadable", resource=kind.resource, name=name, error=str(exc))
            raise ApiError(f"stored {kind.resource} {name!r} is unreadable") from None
        return resource


def _what(kind: Kind, name: str) -> str:
    return f"{kind.resource} {name!r}"


def _names(names: list[str]) -> str:
    return ("domain " if len(names) == 1 else "domains ") + ", ".join(names)


def _not_found(kind: Kind, name: str) -> ApiError:
    return NotFound(f"{kind.resource} {name!r} not found")


def _concurrent(kind: Kind, name: str) -> Conflict:
    return Conflict(f"{kind.resource} {name!r} was changed concurrently; read it again and retry")
