"""The config store: resources in the ``gtm_config`` KV bucket, validated, with an operation log."""

from __future__ import annotations

import asyncio
import contextlib
import re
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
    TEMPLATE,
    HealthTemplate,
    Incoming,
    Kind,
    Resource,
    check_preconditions,
    decode,
    document,
    merge_patch,
    parse_json,
    pop_revision,
)
from services.config.errors import (
    ApiError,
    Conflict,
    InvalidArgument,
    NotFound,
    from_resource_error,
)
from services.config.validation import (
    expand_templates,
    reresolve,
    template_refs,
    uses_template,
    validate_alert_target,
    validate_regions,
    validate_template,
    validate_topology,
)
from services.config.view import ConfigView
from shared import subjects
from shared.messages import OperationEvent, encoder
from shared.resources import (
    NAME_RE,
    AlertTarget,
    Domain,
    HealthCheck,
    Pool,
    ResourceError,
    Topology,
    validate_domain,
    validate_pool,
)

log = structlog.get_logger(__name__)

_WRONG_LAST_SEQUENCE = (10071, 10164)
_REWRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class Stored:
    """A resource as stored, with its KV revision."""

    name: str
    resource: Resource
    revision: int


class ConfigStore:
    """Reads (from the bucket view) and validated writes of every config resource, each write logged."""

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

    async def domains_using(self, pool: str) -> list[str]:
        """Names of the domains that use ``pool``."""
        return [
            s.name
            for s in await self.list_all(DOMAIN)
            if isinstance(s.resource, Domain) and any(ref.pool == pool for ref in s.resource.pools)
        ]

    async def pools_using(self, template: str) -> list[Stored]:
        """The stored pools with a check made from health template ``template``."""
        return [
            s for s in await self.list_all(POOL) if isinstance(s.resource, Pool) and uses_template(s.resource, template)
        ]

    # -- writes ----------------------------------------------------------------

    async def put(self, kind: Kind, name: str, body: bytes, *, if_match: str | None) -> tuple[Stored, bool]:
        """Create or replace a resource; return it and whether it was created."""
        name = kind.canonical(name)
        incoming = decode(kind, body)
        async with self._lock:
            current = await self._current(kind, name, if_match=if_match, body_revision=incoming.revision)
            stored = await self._write(kind, name, parse_json(body), incoming, current, "PUT")
        return stored, current is None

    async def patch(self, kind: Kind, name: str, body: bytes, *, if_match: str | None) -> Stored:
        """Apply a JSON merge-patch to a resource and validate the result."""
        name = kind.canonical(name)
        patch = parse_json(body)
        body_revision = pop_revision(patch)
        async with self._lock:
            current = await self._current(kind, name, if_match=if_match, body_revision=body_revision, must_exist=True)
            assert current is not None
            merged = merge_patch(document(current.resource), patch)
            incoming = decode(kind, msgspec.json.encode(merged))
            return await self._write(kind, name, merged, incoming, current, "PATCH")

    async def delete(self, kind: Kind, name: str, *, if_match: str | None) -> int:
        """Delete a resource (409 for one in use); return the delete marker's revision."""
        name = kind.canonical(name)
        async with self._lock:
            current = await self._current(kind, name, if_match=if_match, body_revision=None, must_exist=True)
            assert current is not None
            if users := await self._users(kind, name):
                raise Conflict(f"{_what(kind, name)} is used by {users}; remove it from there first")
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

    async def _current(
        self, kind: Kind, name: str, *, if_match: str | None, body_revision: int | None, must_exist: bool = False
    ) -> Stored | None:
        """The stored resource, after checking the write's preconditions against it."""
        current = await self.find(kind, name)
        check_preconditions(
            if_match=if_match,
            body_revision=body_revision,
            current=current.revision if current else None,
            what=_what(kind, name),
            must_exist=must_exist,
        )
        return current

    async def _users(self, kind: Kind, name: str) -> str:
        """What uses the resource (it cannot be deleted then), as words; "" when nothing does."""
        if kind is POOL and (domains := await self.domains_using(name)):
            return _names("domain", domains)
        if kind is TEMPLATE and (pools := await self.pools_using(name)):
            return _names("pool", [s.name for s in pools])
        return ""

    async def _write(
        self, kind: Kind, name: str, doc: Any, incoming: Incoming, current: Stored | None, method: str
    ) -> Stored:
        """Validate and store ``incoming`` (decoded from ``doc``) over ``current``; log the operation.

        A changed health template is re-resolved into every pool made from it, each pool
        rewritten with its own operation event, so the probers see the change.
        """
        validated = await self._validate(kind, name, doc, incoming, current)
        followers = await self._reresolved(name, validated) if isinstance(validated, HealthCheck) else []
        revision = await self._store(kind, name, validated, current)
        await self._record(kind, name, method, revision)
        for pool, new in followers:
            await self._rewrite_pool(pool, new, template=name)
        return Stored(name, validated, revision)

    async def _store(self, kind: Kind, name: str, resource: Resource, current: Stored | None) -> int:
        """Create or update one KV entry; a concurrent writer is a conflict."""
        data = encoder.encode(resource)
        try:
            if current is None:
                return int(await self.kv.create(kind.key(name), data))
            return int(await self.kv.update(kind.key(name), data, last=current.revision))
        except KeyWrongLastSequenceError:
            raise _concurrent(kind, name) from None

    async def _validate(self, kind: Kind, name: str, doc: Any, incoming: Incoming, current: Stored | None) -> Resource:
        try:
            if isinstance(incoming, Pool):
                return await self._validate_pool(name, doc, current)
            if isinstance(incoming, Domain):
                pools: dict[str, Pool] = {}
                for ref in incoming.pools:
                    found = await self.find(POOL, ref.pool)
                    if found is not None and isinstance(found.resource, Pool):
                        pools[ref.pool] = found.resource
                return validate_domain(incoming, name, pools)
            if isinstance(incoming, HealthTemplate):
                return validate_template(incoming, name)
            if isinstance(incoming, AlertTarget):
                return validate_alert_target(incoming, name)
            assert isinstance(incoming, Topology)
            return validate_topology(incoming)
        except ResourceError as exc:
            raise from_resource_error(exc) from None

    async def _validate_pool(self, name: str, doc: Any, current: Stored | None) -> Pool:
        """Resolve the pool's template references, then check it like any pool."""
        templates: dict[str, HealthCheck] = {}
        for ref in template_refs(doc):
            found = await self.find(TEMPLATE, ref) if re.match(NAME_RE, ref) else None
            if found is not None and isinstance(found.resource, HealthCheck):
                templates[ref] = found.resource
        resolved = decode(POOL, msgspec.json.encode(expand_templates(doc, templates)))
        assert isinstance(resolved, Pool)
        pool = validate_pool(resolved, name)
        validate_regions(pool)
        changes_type = current is not None and isinstance(current.resource, Pool) and current.resource.type != pool.type
        if changes_type and (users := await self.domains_using(name)):
            raise InvalidArgument(f"pool {name!r} is used by {_names('domain', users)}; its type cannot change", "type")
        return pool

    async def _reresolved(self, template: str, check: HealthCheck) -> list[tuple[Stored, Pool]]:
        """The pools made from ``template`` that change with its new version, each re-resolved and checked."""
        out = []
        for stored in await self.pools_using(template):
            assert isinstance(stored.resource, Pool)
            new = reresolve(stored.resource, template, check)
            if new == stored.resource:
                continue
            try:
                validate_pool(new, stored.name)
            except ResourceError as exc:
                where = exc.field.rpartition(".health_check.")
                raise InvalidArgument(
                    f"{exc.message} in pool {stored.name!r} ({exc.field})", where[2] if where[1] else ""
                ) from None
            out.append((stored, new))
        return out

    async def _rewrite_pool(self, stored: Stored, new: Pool, *, template: str) -> None:
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
            await self._record(POOL, stored.name, "PUT", revision, message=message)
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

    async def _record(self, kind: Kind, name: str, method: str, revision: int, *, message: str = "") -> None:
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
            message=message or f"{method} {path}",
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
            resource: Resource = kind.stored.decode(value)
        except msgspec.DecodeError as exc:
            log.error("stored_resource_unreadable", resource=kind.resource, name=name, error=str(exc))
            raise ApiError(f"stored {kind.resource} {name!r} is unreadable") from None
        return resource


def _what(kind: Kind, name: str) -> str:
    return kind.resource if kind.singleton else f"{kind.resource.replace('_', ' ')} {name!r}"


def _names(what: str, names: list[str]) -> str:
    return (what if len(names) == 1 else f"{what}s") + " " + ", ".join(names)


def _not_found(kind: Kind, name: str) -> ApiError:
    return NotFound(f"{_what(kind, name)} not found")


def _concurrent(kind: Kind, name: str) -> Conflict:
    return Conflict(f"{_what(kind, name)} was changed concurrently; read it again and retry")
