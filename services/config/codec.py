"""The REST API's resources (pure): kinds and their decoders, decoding, merge-patch, preconditions, rendering."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

import msgspec

from services.config.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    from_decode_error,
    from_resource_error,
)
from shared.resources import (
    NAME_RE,
    RESOURCE_KINDS,
    AlertTarget,
    Domain,
    HealthCheck,
    HealthTemplate,
    Pool,
    ResourceError,
    ResourceKind,
    Topology,
    normalize_fqdn,
)

API_BASE = "/api/v1"
MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 32  # nesting of a request body; a config document nests under 10 levels
MAX_REVISION_DIGITS = 20  # an If-Match tag longer than any KV revision (uint64) matches none

Resource = Pool | Domain | HealthCheck | AlertTarget | Topology  # as stored
Incoming = Pool | Domain | HealthTemplate | AlertTarget | Topology  # as decoded from a request body


@dataclass(frozen=True)
class Kind(ResourceKind):
    """A resource kind as the config service handles it: decoders, canonical names, API paths."""

    @classmethod
    def of(cls, spec: ResourceKind) -> Kind:
        """The config service's view of a kind of :data:`~shared.resources.RESOURCE_KINDS`."""
        return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})

    @cached_property
    def decoder(self) -> msgspec.json.Decoder[Any]:
        """Decoder of request bodies."""
        return msgspec.json.Decoder(self.body)

    @cached_property
    def stored_decoder(self) -> msgspec.json.Decoder[Any]:
        """Decoder of KV values."""
        return msgspec.json.Decoder(self.stored)

    @property
    def empty(self) -> Resource | None:
        """What GET answers for a singleton never written (at revision 0); None for other kinds."""
        return cast(Resource, self.stored()) if self.singleton else None

    def canonical(self, name: str) -> str:
        """The resource's canonical name; raise ``invalid_argument`` (field "name")."""
        if self.fqdn_names:
            try:
                return normalize_fqdn(name)
            except ResourceError as exc:
                raise from_resource_error(exc) from None
        if not re.fullmatch(NAME_RE, name):  # fullmatch: `$` alone lets a trailing newline through
            raise InvalidArgument(f"invalid {self.resource} name {name!r}: 1-64 of A-Za-z0-9._-", "name")
        return name

    def path(self, name: str) -> str:
        """The resource's URL path."""
        if self.singleton:
            return f"{API_BASE}/{self.collection}"
        return f"{API_BASE}/{self.collection}/{name}"

    def describe(self, name: str) -> str:
        """The resource in words: ``pool 'Primary-DC'``, ``alert target 'ops'``, ``topology``."""
        return self.resource if self.singleton else f"{self.resource.replace('_', ' ')} {name!r}"


KINDS: dict[str, Kind] = {spec.resource: Kind.of(spec) for spec in RESOURCE_KINDS}  # by resource, in apply order
POOL, DOMAIN, TEMPLATE = KINDS["pool"], KINDS["domain"], KINDS["template"]
ALERT_TARGET, TOPOLOGY = KINDS["alert_target"], KINDS["topology"]
COLLECTIONS: dict[str, Kind] = {k.collection: k for k in KINDS.values()}  # by URL segment
MANIFEST_KINDS: dict[str, Kind] = {k.manifest_key: k for k in KINDS.values()}  # by config-document key


@dataclass(frozen=True)
class Stored:
    """A resource as stored, with its KV revision."""

    name: str
    resource: Resource
    revision: int


_any_json = msgspec.json.Decoder()


def _decode_body(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    if not body.strip():
        raise InvalidArgument("a JSON request body is required")
    try:
        value = decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None
    except RecursionError:  # msgspec refuses nesting deeper than the interpreter's recursion limit
        raise too_deep() from None
    check_depth(value)
    return value


def too_deep() -> InvalidArgument:
    """The error for a body nested deeper than :data:`MAX_JSON_DEPTH`."""
    return InvalidArgument(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise ``invalid_argument`` if ``value`` nests lists and objects deeper than ``limit``.

    Iterative, so it never recurses itself: merge-patch, validation and re-encoding, which do,
    only ever see values this shallow.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            raise too_deep()
        stack.extend((child, depth + 1) for child in children)


def decode(kind: Kind, body: bytes) -> Incoming:
    """Decode a request body into a resource Struct; raise ``invalid_argument``."""
    resource: Incoming = _decode_body(kind.decoder, body)
    return resource


def parse_json(body: bytes) -> Any:
    """Parse any JSON document (a merge-patch); raise ``invalid_argument``."""
    return _decode_body(_any_json, body)


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge-patch (RFC 7396) to ``target``; neither is modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def pop_revision(patch: Any) -> int | None:
    """Take the ``revision`` out of a merge-patch object (it acts like If-Match)."""
    if not isinstance(patch, dict) or "revision" not in patch:
        return None
    revision = patch.pop("revision")
    if revision is None:
        return None
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise InvalidArgument("Expected `int | null`", "revision")
    return revision


def patchable(resource: Resource) -> dict[str, Any]:
    """The stored resource as a JSON object, without ``name`` and ``revision`` (what a PATCH merges into)."""
    doc: dict[str, Any] = msgspec.to_builtins(resource)
    doc.pop("name", None)
    doc.pop("revision", None)
    return doc


def render(resource: Resource, name: str, revision: int, *, named: bool = True) -> dict[str, Any]:
    """The API view of a resource: every field incl. defaults, plus name (unless not ``named``) and revision."""
    out: dict[str, Any] = msgspec.to_builtins(resource)
    if named:
        out["name"] = name
    out["revision"] = revision
    return out


def etag(revision: int) -> str:
    """The ETag header value of a revision."""
    return f'"{revision}"'


def if_match_ok(header: str, current: int | None) -> bool:
    """Whether an ``If-Match`` header (quoted or not, ``*``, a list) matches ``current``.

    A tag is a revision in ASCII digits; anything else (``²``, 5,000 digits) matches nothing.
    """
    if current is None:
        return False
    for token in header.split(","):
        tag = token.strip().removeprefix("W/").strip('"').strip()
        if tag == "*":
            return True
        if tag.isascii() and tag.isdigit() and len(tag) <= MAX_REVISION_DIGITS and int(tag) == current:
            return True
    return False


def _quoted(text: str, limit: int = 64) -> str:
    """``text`` for an error message: stripped and cut to ``limit`` characters."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def check_preconditions(
    *, if_match: str | None, body_revision: int | None, current: int | None, what: str, must_exist: bool
) -> None:
    """Raise ``not_found`` or ``precondition_failed`` for a write to ``what``."""
    if must_exist and current is None:
        raise NotFound(f"{what} not found")
    if if_match is not None and not if_match_ok(if_match, current):
        raise PreconditionFailed(f"{what} is at revision {current or 0}, not {_quoted(if_match)}")
    if body_revision is not None and body_revision != (current or 0):
        raise PreconditionFailed(f"{what} is at revision {current or 0}, not {body_revision}")
