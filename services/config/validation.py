"""Pure checks of a proposed config write (:func:`validate_write`), the resource checks shared/
does not do itself, and health-template resolution.

A write is checked against the resources around it (:class:`Related`), which the caller reads
first: the store before it writes, a preview of the store when a whole document is checked.

An address refers to a template as ``"health_check": {"template": "web", "port": 8081}``:
the fields given beside ``template`` override the template's, field by field.  Pools are
stored resolved (the full effective check, with ``template`` and ``overrides`` recorded),
so nothing downstream needs to know about templates.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from services.config.codec import POOL, Incoming, Resource, Stored, decode
from services.config.errors import InvalidArgument, PayloadTooLarge, from_resource_error
from shared.resources import (
    NAME_RE,
    AlertTarget,
    Domain,
    HealthCheck,
    HealthTemplate,
    Pool,
    ResourceError,
    Topology,
    check_health,  # the same rules as an address's check
    check_no_control,
    check_url_name,
    checks_of,
    validate_domain,
    validate_pool,
)

CHECK_FIELDS = tuple(f for f in HealthCheck.__struct_fields__ if f not in ("template", "overrides"))
_NAME = re.compile(NAME_RE)
# The largest resource stored, as encoded: under NATS's 1 MiB message payload (max_payload), with
# room for the KV headers, so a write too big is refused up front (413) instead of failing in NATS
# (503, which invites retries).  Request bodies are limited apart (codec.MAX_BODY_BYTES).
MAX_STORED_BYTES = 960 * 1024
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Related:
    """The other resources a write or delete is checked against (read by the caller)."""

    templates: Mapping[str, HealthCheck] = dataclasses.field(default_factory=dict)  # a pool's health templates, by name
    pools: Mapping[str, Pool] = dataclasses.field(default_factory=dict)  # a domain's pools, by name
    domains_using: tuple[str, ...] = ()  # the domains that use this pool (for a delete, or a change of type)
    pools_using: tuple[Stored, ...] = ()  # the pools made from this health template


@dataclass(frozen=True)
class Validated:
    """A write that passed: the resource to store, and the pools re-resolved from a changed template."""

    resource: Resource
    followers: tuple[tuple[Stored, Pool], ...] = ()  # (pool as stored, its new version) to rewrite


def validate_write(name: str, doc: Any, incoming: Incoming, *, current: Resource | None, related: Related) -> Validated:
    """Check a proposed write of resource ``name``: ``incoming``, decoded from JSON ``doc``, over ``current``.

    Raise ``invalid_argument`` naming the field.  The store runs this before every write, and
    so does the check of a whole document, against the store as the document's earlier changes
    will have left it.
    """
    try:
        resource: Resource
        if isinstance(incoming, Pool):
            resource = _validate_pool(name, doc, current, related)
        elif isinstance(incoming, Domain):
            resource = validate_domain(incoming, name, related.pools)
        elif isinstance(incoming, HealthTemplate):
            resource = validate_template(incoming, name)
        elif isinstance(incoming, AlertTarget):
            resource = validate_alert_target(incoming, name)
        else:
            resource = validate_topology(incoming)
    except ResourceError as exc:
        raise from_resource_error(exc) from None
    check_size(resource, f"{_WORDS[type(resource)]} {name!r}" if not isinstance(resource, Topology) else "topology")
    if isinstance(resource, HealthCheck):  # a template: the pools made from it must stay valid
        return Validated(resource, _reresolved(name, resource, related.pools_using))
    return Validated(resource)


_WORDS: dict[type, str] = {Pool: "pool", Domain: "domain", HealthCheck: "template", AlertTarget: "alert target"}


def check_size(resource: Resource, what: str, *, limit: int = MAX_STORED_BYTES, named: bool = True) -> None:
    """Refuse a resource whose stored form is over ``limit`` bytes: 413, naming its biggest field (if ``named``)."""
    size = len(_encoder.encode(resource))
    if size <= limit:
        return
    sizes = {f: len(_encoder.encode(getattr(resource, f))) for f in resource.__struct_fields__}
    biggest = max(sizes, key=lambda f: sizes[f])
    raise PayloadTooLarge(
        f"{what} would be stored as {size} bytes, over the limit of {limit} "
        f"(NATS carries at most 1 MiB per message); {biggest} takes {sizes[biggest]}: split it",
        biggest if named else "",
    )


def users(related: Related) -> str:
    """What uses the resource (it cannot be deleted then), in words; "" when nothing does."""
    if related.domains_using:
        return _names("domain", related.domains_using)
    if related.pools_using:
        return _names("pool", [s.name for s in related.pools_using])
    return ""


def _names(what: str, found: Sequence[str]) -> str:
    """``domain a.example.com`` or ``domains a.example.com, b.example.com``."""
    return (what if len(found) == 1 else f"{what}s") + " " + ", ".join(found)


def _validate_pool(name: str, doc: Any, current: Resource | None, related: Related) -> Pool:
    """Resolve the pool's template references, then check it like any pool."""
    resolved = decode(POOL, msgspec.json.encode(expand_templates(doc, related.templates)))
    assert isinstance(resolved, Pool)
    pool = validate_pool(resolved, name)
    validate_regions(pool)
    if isinstance(current, Pool) and current.type != pool.type and related.domains_using:
        used_by = _names("domain", related.domains_using)
        raise InvalidArgument(f"pool {name!r} is used by {used_by}; its type cannot change", "type")
    return pool


def _reresolved(template: str, check: HealthCheck, pools: Sequence[Stored]) -> tuple[tuple[Stored, Pool], ...]:
    """The ``pools`` made from ``template`` that change with its new version, each re-resolved and checked."""
    out = []
    for stored in pools:
        assert isinstance(stored.resource, Pool)
        new = reresolve(stored.resource, template, check)
        if new == stored.resource:
            continue
        try:
            validate_pool(new, stored.name)
        except ResourceError as exc:
            where = re.search(r"\.health_checks?(\[\d+\])?\.(.*)$", exc.field)
            raise InvalidArgument(
                f"{exc.message} in pool {stored.name!r} ({exc.field})", where.group(2) if where else ""
            ) from None
        check_size(new, f"pool {stored.name!r}, made from this template,", named=False)
        out.append((stored, new))
    return tuple(out)


def check_name(given: str | None, name: str) -> None:
    """A resource's ``name`` field, when given, must be the one in the path."""
    if given is not None and given != name:
        raise ResourceError(f"name {given!r} does not match the path", "name")


def check_region(region: str, field: str) -> None:
    """A region is empty or 1-64 of A-Za-z0-9._-."""
    if region and not _NAME.match(region):
        raise ResourceError("regions are 1-64 of A-Za-z0-9._-", field)


def validate_regions(pool: Pool) -> None:
    """Check the optional regions of a pool and of its addresses."""
    check_region(pool.region, "region")
    for i, addr in enumerate(pool.addresses):
        check_region(addr.region, f"addresses[{i}].region")


def validate_template(template: HealthTemplate, name: str) -> HealthCheck:
    """Check a health-check template; return it as the HealthCheck that is stored."""
    check_name(template.name, name)
    check_url_name(name, "name", "template")
    if template.template:
        raise ResourceError("a template cannot refer to another template", "template")
    if template.overrides:
        raise ResourceError("a template has no overrides", "overrides")
    try:
        check_health(template, "")
    except ResourceError as exc:
        raise ResourceError(exc.message, exc.field.lstrip(".")) from None
    values = {f: getattr(template, f) for f in HealthCheck.__struct_fields__}
    return HealthCheck(**values)


def validate_alert_target(target: AlertTarget, name: str) -> AlertTarget:
    """Check an alert target by its type; return it named.

    A webhook needs an http(s) URL with a host; an email target an SMTP ``host:port``, a ``from``
    and at least one ``to`` that look like addresses; an Apprise target a URL Apprise accepts.
    A field of another type (``smtp`` on a webhook, ``url`` on an email target) is refused.
    """
    import apprise  # here, not at the top: only alert targets need them

    from services.config import alerts
    check_name(target.name, name)
    check_url_name(name, "name", "alert target")
    own = {"webhook": {"url"}, "apprise": {"url"},
           "email": {"smtp", "sender", "to", "starttls", "username", "password"}}[target.type]
    for f in msgspec.structs.fields(AlertTarget):
        if f.name in {"url", "smtp", "sender", "to", "starttls", "username", "password"} - own \
                and getattr(target, f.name):
            raise ResourceError(f"{f.encode_name} is not a field of {target.type} alert targets", f.encode_name)
    if target.type == "email":
        for field, value in (("smtp", target.smtp), ("from", target.sender), ("username", target.username),
                             ("password", target.password), *((f"to[{i}]", t) for i, t in enumerate(target.to))):
            check_no_control(value, field)  # CR and LF would split an SMTP command or a header
        try:
            alerts.smtp_endpoint(target.smtp)
        except ValueError as exc:
            raise ResourceError(f"{target.smtp!r}: {exc}", "smtp") from None
        if not alerts.is_address(target.sender):
            raise ResourceError("from must be an email address", "from")
        if not target.to:
            raise ResourceError("an email target needs at least one address in to", "to")
        for i, address in enumerate(target.to):
            if not alerts.is_address(address):
                raise ResourceError(f"{address!r} is not an email address", f"to[{i}]")
        if target.password and not target.username:
            raise ResourceError("a password needs a username", "password")
    elif target.type == "apprise":
        check_no_control(target.url, "url")
        if not target.url:
            raise ResourceError("an apprise target needs a url", "url")
        if not apprise.Apprise().add(target.url):
            raise ResourceError("url is not a URL Apprise knows (see its list of services)", "url")
    else:
        check_no_control(target.url, "url")  # urlsplit would drop CR, LF and tab silently
        try:
            url = urllib.parse.urlsplit(target.url)
            host, _port = url.hostname, url.port  # .port raises on a bad port
        except ValueError:
            raise ResourceError(f"{target.url!r} is not a valid URL", "url") from None
        if url.scheme not in ("http", "https") or not host:
            raise ResourceError("url must be an http:// or https:// URL with a host", "url")
    return msgspec.structs.replace(target, name=name, kinds=list(dict.fromkeys(target.kinds)), revision=None)


def validate_topology(topology: Topology) -> Topology:
    """Check every CIDR and region; no CIDR twice; return it with CIDRs in canonical form."""
    seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    entries = []
    for i, entry in enumerate(topology.entries):
        try:
            net = ipaddress.ip_network(entry.cidr.strip(), strict=False)
        except ValueError:
            raise ResourceError(f"{entry.cidr!r} is not a valid CIDR", f"entries[{i}].cidr") from None
        if net in seen:
            raise ResourceError(f"{net} is listed twice (first at entries[{seen[net]}])", f"entries[{i}].cidr")
        seen[net] = i
        if not _NAME.match(entry.region):
            raise ResourceError("regions are 1-64 of A-Za-z0-9._-", f"entries[{i}].region")
        entries.append(msgspec.structs.replace(entry, cidr=str(net)))
    return msgspec.structs.replace(topology, entries=entries, revision=None)


# -- health templates ---------------------------------------------------------------------


CheckSlot = tuple[int, str, int | None]  # (address index, "health_check" | "health_checks", index in the list)


def _checks(doc: Any) -> Iterator[tuple[CheckSlot, dict[str, Any]]]:
    """(where, check object) of every check of every address of a pool document (shorthand or list)."""
    addresses = doc.get("addresses") if isinstance(doc, dict) else None
    for i, addr in enumerate(addresses if isinstance(addresses, list) else []):
        if not isinstance(addr, dict):
            continue
        if isinstance(addr.get("health_check"), dict):
            yield (i, "health_check", None), addr["health_check"]
        listed = addr.get("health_checks")
        for j, hc in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(hc, dict):
                yield (i, "health_checks", j), hc


def _slot_field(slot: CheckSlot) -> str:
    i, key, j = slot
    return f"addresses[{i}].{key}" + ("" if j is None else f"[{j}]")


def _put(doc: dict[str, Any], slot: CheckSlot, check: dict[str, Any]) -> None:
    i, key, j = slot
    if j is None:
        doc["addresses"][i][key] = check
    else:
        doc["addresses"][i][key][j] = check


def template_refs(doc: Any) -> set[str]:
    """Names of the health templates a pool document refers to."""
    return {hc["template"] for _, hc in _checks(doc) if isinstance(hc.get("template"), str) and hc["template"]}


def merge_check(template: HealthCheck, values: Mapping[str, Any], overrides: list[str], name: str) -> dict[str, Any]:
    """The effective check (as a document): the template's fields, ``overrides`` taken from ``values``."""
    merged: dict[str, Any] = msgspec.to_builtins(template)
    merged.update({f: values[f] for f in overrides})
    merged["template"], merged["overrides"] = name, overrides
    return merged


def _overrides(hc: dict[str, Any], base: dict[str, Any], field: str) -> list[str]:
    """Which fields of an address's check override its template.

    Without an ``overrides`` list every field given beside ``template`` does.  With one (a
    document read back from the API) the fields it lists do, and so does any field whose
    value differs from the template's: an edit made without updating the list still counts.
    """
    listed = hc.get("overrides")
    if listed is None:
        return [f for f in CHECK_FIELDS if f in hc]
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
        return []  # the decoder reports the type error
    for j, f in enumerate(listed):
        if f not in CHECK_FIELDS:
            raise ResourceError(f"{f!r} is not a health-check field", f"{field}.overrides[{j}]")
    return [f for f in CHECK_FIELDS if f in hc and (f in listed or hc[f] != base[f])]


def expand_templates(doc: Any, templates: Mapping[str, HealthCheck]) -> Any:
    """A pool document with every template reference replaced by the effective check.

    A check without a template keeps no ``overrides``.  A reference to a template that is
    not in ``templates`` raises (field ``addresses[i].health_check.template``).
    """
    if not any(True for _ in _checks(doc)):
        return doc
    out = dict(doc)
    out["addresses"] = [dict(a) if isinstance(a, dict) else a for a in doc["addresses"]]
    for a in out["addresses"]:
        if isinstance(a, dict) and isinstance(a.get("health_checks"), list):
            a["health_checks"] = list(a["health_checks"])
    for slot, hc in list(_checks(out)):
        field = _slot_field(slot)
        name = hc.get("template")
        if not name or not isinstance(name, str):
            _put(out, slot, {k: v for k, v in hc.items() if k != "overrides"})
            continue
        template = templates.get(name)
        if template is None:
            raise ResourceError(f"health template {name!r} does not exist", f"{field}.template")
        overrides = _overrides(hc, msgspec.to_builtins(template), field)
        _put(out, slot, merge_check(template, hc, overrides, name))
    return out


def reresolve(pool: Pool, name: str, template: HealthCheck) -> Pool:
    """``pool`` with every check made from template ``name`` rebuilt from its new version."""
    def rebuilt(hc: HealthCheck) -> HealthCheck:
        if hc.template != name:
            return hc
        return msgspec.convert(merge_check(template, msgspec.to_builtins(hc), list(hc.overrides), name), HealthCheck)

    addresses = []
    for addr in pool.addresses:
        if addr.health_check is not None:
            addr = msgspec.structs.replace(addr, health_check=rebuilt(addr.health_check))
        if addr.health_checks:
            addr = msgspec.structs.replace(addr, health_checks=[rebuilt(hc) for hc in addr.health_checks])
        addresses.append(addr)
    return msgspec.structs.replace(pool, addresses=addresses)


def uses_template(pool: Pool, name: str) -> bool:
    """Whether any address of ``pool`` has a check made from template ``name``."""
    return any(hc.template == name for a in pool.addresses for hc in checks_of(a))
