"""Pure document handling: resource kinds, decoding, merge-patch, preconditions, rendering."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from services.config.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    from_decode_error,
    from_resource_error,
)
from shared import subjects
from shared.resources import (
    NAME_RE,
    AlertTarget,
    Domain,
    HealthCheck,
    Name,
    Pool,
    ResourceError,
    Topology,
    domain_decoder,
    normalize_fqdn,
    pool_decoder,
)

API_BASE = "/api/v1"
MAX_BODY_BYTES = 1 << 20

Resource = Pool | Domain | HealthCheck | AlertTarget | Topology  # as stored


class HealthTemplate(HealthCheck, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A health-check template as written through the API: a check plus the usual name and revision."""

    name: Name | None = None
    revision: int | None = None


@dataclass(frozen=True)
class Kind:
    """One kind of config resource: how it is named, keyed, decoded and addressed."""

    resource: str  # as in OperationEvent.resource: "pool", "domain", "template", ...
    collection: str  # the URL segment: "pools", "health-templates", ...
    list_key: str  # the key of the list body: "pools", "templates", ...
    prefix: str  # KV key prefix
    decoder: msgspec.json.Decoder[Any]  # request bodies
    stored: msgspec.json.Decoder[Any]  # KV values
    key_of: Callable[[str], str]
    fqdn_names: bool = False
    singleton: str = ""  # the one resource's name, for a kind without a collection (topology)
    empty: Resource | None = None  # what GET answers for a singleton never written (at revision 0)

    def canonical(self, name: str) -> str:
        """The resource's canonical name; raise ``invalid_argument`` (field "name")."""
        if self.fqdn_names:
            try:
                return normalize_fqdn(name)
            except ResourceError as exc:
                raise from_resource_error(exc) from None
        if not re.match(NAME_RE, name):
            raise InvalidArgument(f"invalid {self.resource} name {name!r}: 1-64 of A-Za-z0-9._-", "name")
        return name

    def key(self, name: str) -> str:
        """KV key of the resource called ``name``."""
        return self.key_of(name)

    def path(self, name: str) -> str:
        """The resource's URL path."""
        if self.singleton:
            return f"{API_BASE}/{self.collection}"
        return f"{API_BASE}/{self.collection}/{name}"


def _decoder(kind: type[Any]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind)


POOL = Kind("pool", "pools", "pools", subjects.POOL_PREFIX, pool_decoder, pool_decoder, subjects.pool_key)
DOMAIN = Kind(
    "domain", "domains", "domains", subjects.DOMAIN_PREFIX, domain_decoder, domain_decoder, subjects.domain_key,
    fqdn_names=True,
)
TEMPLATE = Kind(
    "template", "health-templates", "templates", subjects.TEMPLATE_PREFIX,
    _decoder(HealthTemplate), _decoder(HealthCheck), subjects.template_key,
)
ALERT_TARGET = Kind(
    "alert_target", "alert-targets", "alert_targets", subjects.ALERT_PREFIX,
    _decoder(AlertTarget), _decoder(AlertTarget), subjects.alert_key,
)
TOPOLOGY = Kind(
    "topology", "topology", "", subjects.TOPOLOGY_KEY, _decoder(Topology), _decoder(Topology),
    lambda _name: subjects.TOPOLOGY_KEY, singleton="topology", empty=Topology(),
)
Incoming = Pool | Domain | HealthTemplate | AlertTarget | Topology  # as decoded from a request body
COLLECTIONS: dict[str, Kind] = {k.collection: k for k in (POOL, DOMAIN, TEMPLATE, ALERT_TARGET, TOPOLOGY)}


def decode(kind: Kind, body: bytes) -> Incoming:
    """Decode a request body into a resource Struct; raise ``invalid_argument``."""
    if not body.strip():
        raise InvalidArgument("a JSON request body is required")
    try:
        resource: Incoming = kind.decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None
    return resource


def parse_json(body: bytes) -> Any:
    """Parse any JSON document (a merge-patch); raise ``invalid_argument``."""
    if not body.strip():
        raise InvalidArgument("a JSON request body is required")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None


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


def document(resource: Resource) -> dict[str, Any]:
    """The stored document as a dict, without ``name`` and ``revision`` (what PATCH patches)."""
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
    """Whether an ``If-Match`` header (quoted or not, ``*``, a list) matches ``current``."""
    for token in header.split(","):
        tag = token.strip().removeprefix("W/").strip('"').strip()
        if tag == "*" and current is not None:
            return True
        if tag.isdigit() and current is not None and int(tag) == current:
            return True
    return False


def check_preconditions(
    *, if_match: str | None, body_revision: int | None, current: int | None, what: str, must_exist: bool
) -> None:
    """Raise ``not_found`` or ``precondition_failed`` for a write to ``what``."""
    if must_exist and current is None:
        raise NotFound(f"{what} not found")
    if if_match is not None and not if_match_ok(if_match, current):
        raise PreconditionFailed(f"{what} is at revision {current or 0}, not {if_match.strip()}")
    if body_revision is not None and body_revision != (current or 0):
        raise PreconditionFailed(f"{what} is at revision {current or 0}, not {body_revision}")
