"""The manifest: the declarative config document (gtm.yaml), and the plan that brings a config to it (pure).

One implementation for both writers of documents: ``gtmctl apply`` (over the REST API) and the
config service's ``config.apply`` document form (over NATS).  A document maps each kind (its
:attr:`~shared.resources.ResourceKind.manifest_key`) to its resources by name (or lists them with
a ``name`` field); a singleton kind (the topology) is a single resource.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.resources import RESOURCE_KINDS, ResourceKind

# document key -> its kind; changes apply in this order, prunes in reverse.
KINDS: dict[str, ResourceKind] = {kind.manifest_key: kind for kind in RESOURCE_KINDS}
_META = ("name", "revision")


class ManifestError(ValueError):
    """The document is not a GTM config document."""


@dataclass(frozen=True)
class Change:
    """One step of a plan: ``create``, ``update`` or ``delete`` a resource."""

    action: str
    kind: str
    name: str
    body: dict[str, Any] | None
    diff: str = ""


def load(text: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Parse a YAML or JSON document into ``{kind: {name: body}}`` (singletons under name "")."""
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML or JSON: {exc}") from None
    return from_mapping(raw)


def from_mapping(raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Check an already parsed document and give it as ``{kind: {name: body}}``."""
    if not isinstance(raw, Mapping):
        raise ManifestError("the document must be a mapping of kinds (pools, domains, ...)")
    unknown = set(raw) - set(KINDS)
    if unknown:
        raise ManifestError(f"unknown kinds: {', '.join(sorted(map(str, unknown)))}")
    doc: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, value in raw.items():
        if KINDS[kind].singleton:
            doc[kind] = {"": _body(kind, value)}
        else:
            doc[kind] = _named(kind, value)
    return doc


def _body(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where} must be a mapping of fields")
    return dict(value)


def _named(kind: str, value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): _body(f"{kind}.{k}", v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, dict[str, Any]] = {}
        for i, item in enumerate(value):
            if not isinstance(item, Mapping) or "name" not in item:
                raise ManifestError(f"{kind}[{i}] needs a name")
            body = {k: v for k, v in item.items() if k != "name"}
            out[str(item["name"])] = body
        return out
    raise ManifestError(f"{kind} must be a mapping of name to resource, or a list")


def normalize(kind: str, body: Mapping[str, Any]) -> Any:
    """A body with defaults filled in and metadata dropped, for comparison."""
    clean = {k: v for k, v in body.items() if k not in _META}
    try:
        value = msgspec.convert(clean, KINDS[kind].stored)
    except msgspec.ValidationError:
        return clean  # the API will say what is wrong, with the field
    out = msgspec.to_builtins(value)
    return _drop_resolved_checks(out)


def _drop_resolved_checks(doc: Any) -> Any:
    """Compare a template-based check by its template and overrides only (the API resolves the rest)."""
    for addr in _addresses(doc):
        hc = addr.get("health_check")
        if isinstance(hc, dict) and hc.get("template"):
            keep = {"template", *hc.get("overrides", [])}
            addr["health_check"] = {k: v for k, v in hc.items() if k in keep}
    return doc


def _addresses(doc: Any) -> list[dict[str, Any]]:
    """The address objects of a pool body (none when it is not shaped like one: the API will say)."""
    addrs = doc.get("addresses") if isinstance(doc, dict) else None
    return [a for a in addrs if isinstance(a, dict)] if isinstance(addrs, list) else []


def _desired_check_overrides(body: dict[str, Any]) -> dict[str, Any]:
    """Record, like the API does, which fields a template-based check sets itself."""
    body = copy.deepcopy(body)
    for addr in _addresses(body):
        hc = addr.get("health_check")
        if isinstance(hc, dict) and hc.get("template"):
            hc.setdefault("overrides", sorted(k for k in hc if k not in ("template", "overrides")))
    return body


def plan(
    desired: Mapping[str, Mapping[str, dict[str, Any]]],
    current: Mapping[str, Mapping[str, dict[str, Any]]],
    *,
    prune: bool = False,
) -> list[Change]:
    """The changes that make ``current`` equal ``desired`` (deletes only with ``prune``)."""
    changes: list[Change] = []
    for kind in KINDS:
        for name, body in desired.get(kind, {}).items():
            have = current.get(kind, {}).get(name)
            want = normalize(kind, _desired_check_overrides(body))
            if have is None:
                changes.append(Change("create", kind, name, body, _diff({}, want)))
                continue
            got = normalize(kind, have)
            if got != want:
                changes.append(Change("update", kind, name, body, _diff(got, want)))
    if prune:
        for kind in reversed([k for k, spec in KINDS.items() if not spec.singleton]):
            for name in current.get(kind, {}):
                if kind in desired and name not in desired[kind] or kind not in desired:
                    changes.append(Change("delete", kind, name, None))
    return changes


def _diff(before: Any, after: Any) -> str:
    a = json.dumps(before, indent=2, sort_keys=True, default=str).splitlines()
    b = json.dumps(after, indent=2, sort_keys=True, default=str).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "current", "desired", lineterm="", n=2))
