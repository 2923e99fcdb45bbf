"""The config store: resources in the ``gtm_config`` KV bucket, validated, with an operation log."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import structlog
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.config.audit import Actor, current_actor, diff
from services.config.codec import (
    DOMAIN,
    POOL,
    TEMPLATE,
    Incoming,
    Kind,
    Resource,
    Stored,
    check_preconditions,
    decode,
    merge_patch,
    parse_json,
    patchable,
    pop_revision,
)
from services.config.errors import ApiError, Conflict, NotFound, PayloadTooLarge
from services.config.mirror import ConfigView
from services.config.validation import (
    Related,
    Validated,
    reresolve,
    template_refs,
    users,
    uses_template,
    validate_write,
)
from shared import subjects
from shared.messages import OperationEvent, encoder
from shared.resources import NAME_RE, Domain, HealthCheck, HealthTemplate, Pool, domain_pools

log = structlog.get_logger(__name__)

_WRONG_LAST_SEQUENCE = (10071, 10164)
_REWRITE_ATTEMPTS = 3


class Reader(Protocol):
    """What checking a write reads: the store, or a preview of it with changes not yet written."""

    async def find(self, kind: Kind, name: str) -> Stored | None:
        """The resource called ``name`` (canonical), or None."""

    async def list_all(self, kind: Kind) -> list[Stored]:
        """Every resource of ``kind``, sorted by name."""


class _Raced(Exception):
    """Another writer (another replica) changed the key between a write's check and its store."""


class ConfigStore:
    """The config resources in the ``gtm_config`` bucket: reads, and validated writes each logged.

    ``find`` reads one key from KV; lists and the scans behind a write's checks read the bucket
    view (caught up first).  A write is checked (:func:`check_put`, :func:`check_write` after a
    merge-patch, :func:`check_delete`) and stored under a lock, with optimistic concurrency against
    other writers, then published as an operation event naming who wrote it, through what, and
    the fields it changed; a changed health template also rewrites the pools made from it.

    The lock orders this replica's writes only: when another replica writes between a check and
    the store, the write with a precondition (``If-Match``, a body ``revision``) that no longer
    holds is refused as ``precondition_failed`` like any stale one, one without as ``conflict``.
    The actor of a write is ``actor`` when given, else :func:`~services.config.audit.current_actor`.
    """

    def __init__(
        self,
        kv: KeyValue,
        js: JetStreamContext,
        *,
        view: ConfigView,
        on_event: Callable[[int, OperationEvent], None] = lambda seq, ev: None,
    ) -> None:
        self.kv = kv
        self.js = js
        self.view = view
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
        """The stored resource called ``name`` (as in a URL); raise ``not_found``.

        A singleton never written (the topology) is its empty value at revision 0.
        """
        name = kind.canonical(name)
        found = await self.find(kind, name)
        if found is None:
            if kind.empty is not None:
                return Stored(name, kind.empty, 0)
            raise _not_found(kind, name)
        return found

    async def list_all(self, kind: Kind) -> list[Stored]:
        """Every stored resource of ``kind``, sorted by name."""
        out: list[Stored] = []
        for key, value, revision in await self._scan(kind.prefix):
            _, name = subjects.parse_config_key(key)
            with contextlib.suppress(ApiError):  # unreadable: logged, left out of lists
                out.append(Stored(name, self._decode_stored(kind, name, value), revision))
        return sorted(out, key=lambda s: s.name)

    async def _scan(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """(key, value, revision) of every live key under ``prefix``, including every write made so far."""
        await self.view.caught_up()
        return self.view.scan(prefix)

    # -- writes ----------------------------------------------------------------

    async def put(
        self, kind: Kind, name: str, body: bytes, *, if_match: str | None, actor: Actor | None = None
    ) -> tuple[Stored, bool]:
        """Create or replace a resource; return it and whether it was created."""
        name = kind.canonical(name)
        async with self._lock:
            current, validated = await check_put(self, kind, name, body, if_match=if_match)
            try:
                stored = await self._write(kind, name, validated, current, "PUT", actor)
            except _Raced:
                raise await self._raced(kind, name, if_match, _body_revision(body)) from None
        return stored, current is None

    async def patch(
        self, kind: Kind, name: str, body: bytes, *, if_match: str | None, actor: Actor | None = None
    ) -> Stored:
        """Apply a JSON merge-patch to a resource and validate the result."""
        name = kind.canonical(name)
        patch = parse_json(body)
        body_revision = pop_revision(patch)
        async with self._lock:
            current = await checked_current(self, kind, name, if_match=if_match, body_revision=body_revision,
                                            must_exist=True)
            assert current is not None
            merged = merge_patch(patchable(current.resource), patch)
            incoming = decode(kind, msgspec.json.encode(merged))
            validated = await check_write(self, name, merged, incoming, current)
            try:
                return await self._write(kind, name, validated, current, "PATCH", actor)
            except _Raced:
                raise await self._raced(kind, name, if_match, body_revision) from None

    async def delete(self, kind: Kind, name: str, *, if_match: str | None, actor: Actor | None = None) -> int:
        """Delete a resource (409 for one in use); return the delete marker's revision."""
        name = kind.canonical(name)
        async with self._lock:
            current = await check_delete(self, kind, name, if_match=if_match)
            try:
                await self.kv.delete(kind.key(name), last=current.revision)
            except APIError as exc:
                if exc.err_code in _WRONG_LAST_SEQUENCE:
                    raise await self._raced(kind, name, if_match, None) from None
                raise
            revision = await self._marker_revision(kind, name)
            await self._record(kind, name, "DELETE", revision, before=current.resource, after=None, actor=actor)
        return revision

    # -- internals -------------------------------------------------------------

    async def _write(
        self, kind: Kind, name: str, validated: Validated, current: Stored | None, method: str, actor: Actor | None
    ) -> Stored:
        """Store a checked write over ``current`` and log the operation.

        A changed health template is re-resolved into every pool made from it, each pool
        rewritten with its own operation event, so the probers see the change.
        """
        revision = await self._store(kind, name, validated.resource, current)
        before = current.resource if current else None
        await self._record(kind, name, method, revision, before=before, after=validated.resource, actor=actor)
        for pool, new in validated.followers:
            await self._rewrite_pool(pool, new, template=name, actor=actor)
        return Stored(name, validated.resource, revision)

    async def _store(self, kind: Kind, name: str, resource: Resource, current: Stored | None) -> int:
        """Create or update one KV entry; raise :class:`_Raced` when another writer got there first."""
        data = encoder.encode(resource)
        try:
            if current is None:
                return int(await self.kv.create(kind.key(name), data))
            return int(await self.kv.update(kind.key(name), data, last=current.revision))
        except KeyWrongLastSequenceError:
            raise _Raced from None
        except MaxPayloadError:  # validation keeps stored forms under MAX_STORED_BYTES: a smaller server limit
            raise PayloadTooLarge(
                f"{kind.describe(name)} is {len(data)} bytes as stored, more than NATS accepts in one message"
            ) from None

    async def _raced(self, kind: Kind, name: str, if_match: str | None, body_revision: int | None) -> ApiError:
        """The error for a write another writer overtook: 412 when its precondition no longer holds, else 409."""
        # raises precondition_failed for a stale If-Match or body revision
        await checked_current(self, kind, name, if_match=if_match, body_revision=body_revision)
        return _concurrent(kind, name)

    async def _rewrite_pool(self, stored: Stored, new: Pool, *, template: str, actor: Actor | None) -> None:
        """Store a re-resolved pool; re-read and redo it if it changed meanwhile (another writer)."""
        for _ in range(_REWRITE_ATTEMPTS):
            try:
                revision = await self.kv.update(POOL.key(stored.name), encoder.encode(new), last=stored.revision)
            except KeyWrongLastSequenceError:
                fresh = await self.find(POOL, stored.name)
                template_now = await self.find(TEMPLATE, template)
                if fresh is None or template_now is None or not isinstance(fresh.resource, Pool):
                    return
                assert isinstance(template_now.resource, HealthCheck)
                stored, new = fresh, reresolve(fresh.resource, template, template_now.resource)
                continue
            message = f"PUT {POOL.path(stored.name)}: health template {template!r} changed"
            await self._record(POOL, stored.name, "PUT", revision, before=stored.resource, after=new, actor=actor,
                               message=message)
            return
        log.error("template_reresolve_failed", pool=stored.name, template=template)

    async def _marker_revision(self, kind: Kind, name: str) -> int:
        try:
            await self.kv.get(kind.key(name))
        except KeyNotFoundError as exc:
            entry: Any = exc.entry
            if entry is not None and entry.revision is not None:
                return int(entry.revision)
        return 0

    async def _record(
        self,
        kind: Kind,
        name: str,
        method: str,
        revision: int,
        *,
        before: Resource | None,
        after: Resource | None,
        actor: Actor | None,
        message: str = "",
    ) -> None:
        """Publish the operation event of an accepted write (a failure is logged, not raised)."""
        path = kind.path(name)
        who = actor or current_actor()
        event = OperationEvent(
            at=time.time(),
            method=method,
            path=path,
            resource=kind.resource,
            name=name,
            revision=revision,
            domain=name if kind is DOMAIN else "",
            message=message or f"{method} {path}",
            who=who.who,
            via=who.via,
            client=who.client,
            changes=diff(before, after),
        )
        try:
            ack = await self.js.publish(subjects.operation_event(kind.resource, name), encoder.encode(event))
        except Exception as exc:  # noqa: BLE001 - the write itself succeeded
            log.error("operation_event_not_published", resource=kind.resource, name=name, error=repr(exc))
            return
        self.on_event(ack.seq, event)
        log.info(
            "config_changed", method=method, resource=kind.resource, name=name, revision=revision, who=who.who,
            via=who.via, fields=[c.field for c in event.changes],
        )

    def _decode_stored(self, kind: Kind, name: str, value: bytes) -> Resource:
        try:
            resource: Resource = kind.stored_decoder.decode(value)
        except msgspec.DecodeError as exc:
            log.error("stored_resource_unreadable", resource=kind.resource, name=name, error=str(exc))
            raise ApiError(f"stored {kind.resource} {name!r} is unreadable") from None
        return resource



# -- the checks of a write, over any reader ------------------------------------------------


async def checked_current(
    reader: Reader, kind: Kind, name: str, *, if_match: str | None, body_revision: int | None, must_exist: bool = False
) -> Stored | None:
    """The resource as ``reader`` has it, after checking a write's preconditions against it."""
    current = await reader.find(kind, name)
    check_preconditions(
        if_match=if_match,
        body_revision=body_revision,
        current=current.revision if current else None,
        what=kind.describe(name),
        must_exist=must_exist,
    )
    return current


async def check_put(
    reader: Reader, kind: Kind, name: str, body: bytes, *, if_match: str | None
) -> tuple[Stored | None, Validated]:
    """Check a PUT of ``body`` to ``name`` (canonical): the resource it replaces, and what to store."""
    incoming = decode(kind, body)
    current = await checked_current(reader, kind, name, if_match=if_match, body_revision=incoming.revision)
    return current, await check_write(reader, name, parse_json(body), incoming, current)


async def check_write(reader: Reader, name: str, doc: Any, incoming: Incoming, current: Stored | None) -> Validated:
    """Validate ``incoming`` (decoded from ``doc``) against the resources around it in ``reader``."""
    related = await _related(reader, name, doc, incoming, current)
    return validate_write(name, doc, incoming, current=current.resource if current else None, related=related)


async def check_delete(reader: Reader, kind: Kind, name: str, *, if_match: str | None) -> Stored:
    """Check a DELETE of ``name`` (canonical): it exists, matches ``if_match``, and nothing uses it."""
    current = await checked_current(reader, kind, name, if_match=if_match, body_revision=None, must_exist=True)
    assert current is not None
    related = Related(
        domains_using=await domains_using(reader, name) if kind is POOL else (),
        pools_using=await pools_using(reader, name) if kind is TEMPLATE else (),
    )
    if used_by := users(related):
        raise Conflict(f"{kind.describe(name)} is used by {used_by}; remove it from there first")
    return current


async def _related(reader: Reader, name: str, doc: Any, incoming: Incoming, current: Stored | None) -> Related:
    """What :func:`validate_write` checks ``incoming`` against, read from ``reader``."""
    if isinstance(incoming, Pool):
        templates: dict[str, HealthCheck] = {}
        for template in template_refs(doc):
            found = await reader.find(TEMPLATE, template) if re.match(NAME_RE, template) else None
            if found is not None and isinstance(found.resource, HealthCheck):
                templates[template] = found.resource
        retyped = current is not None and isinstance(current.resource, Pool) and current.resource.type != incoming.type
        return Related(templates=templates, domains_using=await domains_using(reader, name) if retyped else ())
    if isinstance(incoming, Domain):
        pools: dict[str, Pool] = {}
        for pool_name in domain_pools(incoming):
            found = await reader.find(POOL, pool_name) if re.match(NAME_RE, pool_name) else None
            if found is not None and isinstance(found.resource, Pool):
                pools[pool_name] = found.resource
        return Related(pools=pools)
    if isinstance(incoming, HealthTemplate):
        return Related(pools_using=await pools_using(reader, name))
    return Related()


async def domains_using(reader: Reader, pool: str) -> tuple[str, ...]:
    """Names of the domains that use ``pool``."""
    return tuple(
        s.name
        for s in await reader.list_all(DOMAIN)
        if isinstance(s.resource, Domain) and pool in domain_pools(s.resource)
    )


async def pools_using(reader: Reader, template: str) -> tuple[Stored, ...]:
    """The pools with a check made from health template ``template``."""
    return tuple(
        s for s in await reader.list_all(POOL) if isinstance(s.resource, Pool) and uses_template(s.resource, template)
    )


def _body_revision(body: bytes) -> int | None:
    """The ``revision`` of a request body that decoded already (it acts like If-Match)."""
    doc = parse_json(body)
    revision = doc.get("revision") if isinstance(doc, dict) else None
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else None


def _not_found(kind: Kind, name: str) -> ApiError:
    return NotFound(f"{kind.describe(name)} not found")


def _concurrent(kind: Kind, name: str) -> Conflict:
    return Conflict(f"{kind.describe(name)} was changed concurrently; read it again and retry")
