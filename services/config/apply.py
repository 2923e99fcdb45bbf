"""``config.apply``: the REST API's writes and reads over NATS request/reply, same validation and errors.

Two request forms, told apart by the ``document`` key.

One REST call: ``{"method": "PUT", "path": "/api/v1/pools/Primary-DC", "body": {...}, "if_match": "3"}``
(``path`` may omit ``/api/v1``; every resource of the REST API can be reached).  Reply:
``{"status": 201, "body": {...}}`` where ``body`` is what the REST API would answer (the error
body for a status >= 400, null for 204).  The REST handlers run through :func:`execute` too.

A whole document, as ``gtmctl apply`` takes it (:mod:`shared.manifest`, gtm.yaml as JSON):
``{"document": {"pools": {...}, "domains": {...}}, "prune": false, "dry_run": false}``.  The REST
API takes the same request as ``POST /api/v1/apply`` and answers the same body with the reply's
status (:func:`apply_document_request` serves both).  The plan against the store is
:func:`shared.manifest.plan`.  Every change is checked first with the store's own checks
(:func:`~services.config.store.check_put`, :func:`~services.config.store.check_delete`), as if the
earlier changes of the plan were already written; only when all pass are they written, in
dependency order (health templates, pools, domains, alert targets, topology; prunes in reverse)
through the same store writes as the REST API (operation events, revisions, 409 for a resource in
use).  Replies:

- ``{"status": 200, "body": {"changes": [{"action", "kind", "name", "diff", "resets"}], "dry_run": bool}}``
  (``changes`` empty when the store already matches; with ``dry_run`` nothing is written).  An
  ``update`` carries its ``diff`` (current -> desired, text) and ``resets``: the fields the
  document leaves out whose live value is not the default (changed outside the document), which
  the update resets, as ``[{"field": "sequence_mode", "from": "non_preemptive", "to": "preemptive"}]``;
  a create or delete has ``"diff": ""`` and ``"resets": []``;
- ``{"status": 400|404|409|412, "body": {"error": {"code", "message", "field"}}}`` when a change is
  refused: nothing was written.  ``field`` is the REST API's field prefixed with the document kind
  and resource name: ``pools.Primary-DC.addresses[0].address``, ``domains.www.example.com.ttl``,
  ``topology.entries[0].cidr``; just ``pools.Backup-DC`` when the REST error names no field (a
  409), ``document`` when the document itself is malformed;
- when a write fails after others succeeded (a concurrent writer, NATS away), the error body
  also lists ``"applied": [{"action", "kind", "name"}]``, the changes that were written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import structlog
from msgspec import Struct

from services.config import codec
from services.config.codec import API_BASE, COLLECTIONS, MANIFEST_KINDS, Kind, Stored, render
from services.config.errors import (
    NATS_ERRORS,
    ApiError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    from_decode_error,
    nats_unavailable,
)
from services.config.store import ConfigStore, check_delete, check_put
from shared import manifest

log = structlog.get_logger(__name__)

QUEUE_GROUP = "gtm-config"
_PATH_RE = re.compile(r"^/?(?P<collection>[a-z-]+)(?:/(?P<name>[^/]+))?/?$")
_METHODS = ("GET", "PUT", "PATCH", "DELETE")
_SINGLETON_METHODS = ("GET", "PUT")


class ApplyRequest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One config change (or read) sent on ``config.apply``."""

    method: str
    path: str
    body: msgspec.Raw = msgspec.Raw(b"")
    if_match: str | None = None


class FieldReset(Struct, kw_only=True, frozen=True):
    """A field the document leaves out whose live value is not the default: the update resets it."""

    field: str
    from_: Any = msgspec.field(name="from")
    to: Any


class PlannedChange(Struct, kw_only=True, frozen=True):
    """One change of an applied (or dry-run) document."""

    action: Literal["create", "update", "delete"]
    kind: str
    name: str
    diff: str
    resets: list[FieldReset]


class ApplyResult(Struct, kw_only=True, frozen=True):
    """``POST /apply``: the changes made (or, with ``dry_run``, that would be made)."""

    changes: list[PlannedChange]
    dry_run: bool


class ApplyReply(Struct, kw_only=True, frozen=True):
    """The reply: the HTTP status and body the REST API would have answered."""

    status: int
    body: Any = None


@dataclass(frozen=True)
class Outcome:
    """What one request produced: status, body and, for one resource, its revision (the ETag)."""

    status: int
    body: Any = None
    revision: int | None = None


class DocumentRequest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A whole config document sent on ``config.apply``: make the store match it."""

    document: Any
    prune: bool = False
    dry_run: bool = False


request_decoder = msgspec.json.Decoder(ApplyRequest)
document_decoder = msgspec.json.Decoder(DocumentRequest)
_peek_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def parse_path(path: str) -> tuple[Kind, str | None]:
    """The resource kind and name (None for a collection) of an API path."""
    m = _PATH_RE.match(path.removeprefix(API_BASE))
    kind = COLLECTIONS.get(m.group("collection")) if m else None
    if m is None or kind is None or (kind.singleton and m.group("name")):
        raise NotFound(f"no such resource: {path}")
    return kind, kind.singleton or m.group("name")


def _one(kind: Kind, stored: Stored, *, status: int = 200) -> Outcome:
    body = render(stored.resource, stored.name, stored.revision, named=not kind.singleton)
    return Outcome(status, body, stored.revision)


async def execute(
    store: ConfigStore, method: str, kind: Kind, name: str | None, body: bytes, *, if_match: str | None
) -> Outcome:
    """Run one API request on the store (the REST API and ``config.apply`` both come here)."""
    allowed = _SINGLETON_METHODS if kind.singleton else _METHODS if name is not None else ("GET",)
    if method not in allowed:
        raise MethodNotAllowed(f"method {method} is not allowed on {kind.path(name or '').rstrip('/')}")
    if name is None:
        listed = await store.list_all(kind)
        return Outcome(200, {kind.list_key: [render(s.resource, s.name, s.revision) for s in listed]})
    if method == "GET":
        return _one(kind, await store.get(kind, name))
    if method == "DELETE":
        await store.delete(kind, name, if_match=if_match)
        return Outcome(204)
    if method == "PUT":
        stored, created = await store.put(kind, name, body, if_match=if_match)
        return _one(kind, stored, status=201 if created else 200)
    return _one(kind, await store.patch(kind, name, body, if_match=if_match))


async def apply(store: ConfigStore, req: ApplyRequest) -> ApplyReply:
    """Run one request against the store; every failure becomes the API's error reply."""
    try:
        method = req.method.upper()
        if method not in _METHODS:
            raise InvalidArgument(f"method must be one of {', '.join(_METHODS)}", "method")
        kind, name = parse_path(req.path)
        outcome = await execute(store, method, kind, name, bytes(req.body), if_match=req.if_match)
        return ApplyReply(status=outcome.status, body=outcome.body)
    except ApiError as exc:
        return _refused(exc)
    except NATS_ERRORS as exc:
        return _refused(nats_unavailable(exc))


async def handle(store: ConfigStore, data: bytes) -> bytes:
    """Decode one ``config.apply`` request (a REST call or a document), run it, encode the reply."""
    try:
        peek = _peek_decoder.decode(data)
    except msgspec.DecodeError:
        peek = {}
    form = "document" if "document" in peek else "call"
    if form == "document":
        reply = await apply_document_request(store, data)
    else:
        try:
            req = request_decoder.decode(data)
        except msgspec.DecodeError as exc:
            reply = _refused(from_decode_error(exc))
        else:
            reply = await apply(store, req)
    log.info("config_apply", form=form, status=reply.status)
    return msgspec.json.encode(reply)


# -- the document form -------------------------------------------------------------------


async def apply_document_request(store: ConfigStore, data: bytes) -> ApplyReply:
    """Decode a ``{"document", "prune", "dry_run"}`` request (NATS or ``POST /api/v1/apply``) and apply it."""
    if not data.strip():
        return _refused(InvalidArgument("a JSON request body is required"))
    try:
        req = document_decoder.decode(data)
        codec.check_depth(req.document)
    except msgspec.DecodeError as exc:
        return _refused(from_decode_error(exc))
    except ApiError as exc:
        return _refused(exc)
    except RecursionError:
        return _refused(codec.too_deep())
    return await apply_document(store, req)


async def apply_document(store: ConfigStore, req: DocumentRequest) -> ApplyReply:
    """Check every change of the document's plan, then (unless ``dry_run``) write them all."""
    try:
        desired = canonical_names(_parse(req.document))
        changes = manifest.plan(desired, await current_state(store), prune=req.prune)
        await Preview(store).check_all(changes)
    except ApiError as exc:
        return _refused(exc)
    except NATS_ERRORS as exc:
        return _refused(nats_unavailable(exc))
    if req.dry_run:
        return ApplyReply(status=200, body=_planned(changes, dry_run=True))
    applied: list[manifest.Change] = []
    try:
        for change in changes:
            await _write(store, change)
            applied.append(change)
    except ApiError as exc:
        return _refused(exc, applied=applied)
    except NATS_ERRORS as exc:
        return _refused(nats_unavailable(exc), applied=applied)
    return ApplyReply(status=200, body=_planned(changes, dry_run=False))


def _refused(exc: ApiError, *, applied: list[manifest.Change] | None = None) -> ApplyReply:
    """The error reply; after a write failed midway, it lists the changes already ``applied``."""
    body = exc.body() if applied is None else {**exc.body(), "applied": _listed(applied)}
    return ApplyReply(status=exc.status, body=body)


def _parse(raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        return manifest.from_mapping(raw)
    except manifest.ManifestError as exc:
        raise InvalidArgument(str(exc), "document") from None


def canonical_names(desired: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The document with every resource under its canonical name (as the store keys it)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for doc_kind, items in desired.items():
        kind, named = MANIFEST_KINDS[doc_kind], {}
        for name, body in items.items():
            try:
                canon = name if kind.singleton else kind.canonical(name)
            except ApiError as exc:
                raise located(exc, doc_kind, name) from None
            if canon in named:
                raise InvalidArgument(f"{kind.resource} {canon!r} is listed twice", f"{doc_kind}.{canon}")
            named[canon] = body
        out[doc_kind] = named
    return out


async def current_state(store: ConfigStore) -> dict[str, dict[str, dict[str, Any]]]:
    """Every stored resource as the REST API renders it, in the document's shape."""
    state: dict[str, dict[str, dict[str, Any]]] = {}
    for doc_kind, kind in MANIFEST_KINDS.items():
        if kind.singleton:
            found = await store.find(kind, kind.singleton)
            state[doc_kind] = {"": _one(kind, found).body} if found else {}
        else:
            state[doc_kind] = {s.name: render(s.resource, s.name, s.revision) for s in await store.list_all(kind)}
    return state


def located(exc: ApiError, doc_kind: str, name: str) -> ApiError:
    """The error with its field prefixed by the resource: ``pools.Primary-DC.addresses[0].address``."""
    where = f"{doc_kind}.{name}" if name else doc_kind
    exc.field = f"{where}.{exc.field}" if exc.field else where
    return exc


class Preview:
    """The store as it will be once the changes checked so far are written; it writes nothing.

    Each change goes through the store's own checks (decoding, preconditions, validation,
    resources in use) read through this preview, so a document is refused with exactly the
    errors the REST calls would have met one by one.
    """

    def __init__(self, store: ConfigStore) -> None:
        self._store = store
        self._pending: dict[tuple[str, str], Stored | None] = {}  # None: deleted
        self._lists: dict[str, list[Stored]] = {}

    async def find(self, kind: Kind, name: str) -> Stored | None:
        """The resource after the pending changes."""
        if (kind.resource, name) in self._pending:
            return self._pending[kind.resource, name]
        return await self._store.find(kind, name)

    async def list_all(self, kind: Kind) -> list[Stored]:
        """Every resource of ``kind`` after the pending changes."""
        if kind.resource not in self._lists:
            self._lists[kind.resource] = await self._store.list_all(kind)
        found = {s.name: s for s in self._lists[kind.resource]}
        for (resource, name), stored in self._pending.items():
            if resource == kind.resource:
                found.pop(name, None)
                if stored is not None:
                    found[name] = stored
        return sorted(found.values(), key=lambda s: s.name)

    async def check_all(self, changes: list[manifest.Change]) -> None:
        """Check each change in plan order; raise the first refusal, located in the document."""
        for change in changes:
            kind = MANIFEST_KINDS[change.kind]
            try:
                await self.check(kind, kind.singleton or change.name, change)
            except ApiError as exc:
                raise located(exc, change.kind, change.name) from None

    async def check(self, kind: Kind, name: str, change: manifest.Change) -> None:
        """Check one change as the store's write would, then count it as done."""
        if change.action == "delete":
            await check_delete(self, kind, name, if_match=None)
            self._pending[kind.resource, name] = None
            return
        current, validated = await check_put(self, kind, name, msgspec.json.encode(change.body), if_match=None)
        self._pending[kind.resource, name] = Stored(name, validated.resource, current.revision if current else 0)


async def _write(store: ConfigStore, change: manifest.Change) -> None:
    """Write one checked change through the store (as the REST API does); errors are located."""
    kind = MANIFEST_KINDS[change.kind]
    name = kind.singleton or change.name
    try:
        if change.action == "delete":
            await store.delete(kind, name, if_match=None)
        else:
            await store.put(kind, name, msgspec.json.encode(change.body), if_match=None)
    except ApiError as exc:
        raise located(exc, change.kind, change.name) from None


def _listed(changes: list[manifest.Change]) -> list[dict[str, str]]:
    return [{"action": c.action, "kind": c.kind, "name": c.name} for c in changes]


def _planned(changes: list[manifest.Change], *, dry_run: bool) -> ApplyResult:
    """The reply to a document: each change, the diff of an update, and the fields it resets."""
    planned = [
        PlannedChange(
            action=c.action,
            kind=c.kind,
            name=c.name,
            diff=c.diff,
            resets=[FieldReset(field=r.field, from_=r.current, to=r.default) for r in c.resets],
        )
        for c in changes
    ]
    return ApplyResult(changes=planned, dry_run=dry_run)
