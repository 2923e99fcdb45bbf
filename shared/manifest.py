"""The manifest: the declarative config document (gtm.yaml), and the plan that brings a config to it (pure).

One implementation for every writer of documents: the config service plans each document with
it, whether it came as ``POST /api/v1/apply`` (what ``gtmctl apply`` sends) or as the
``config.apply`` document form over NATS.  A document maps each kind (its
:attr:`~shared.resources.ResourceKind.manifest_key`) to its resources by name (or lists them with
a ``name`` field); a singleton kind (the topology) is a single resource.

Each resource of a document is the whole resource, as a REST ``PUT`` takes it: a field the
document leaves out gets its default.  When the live resource has such a field at another
value (someone changed it through the API or the console), applying the document resets it,
and the plan says so: the change lists it in :attr:`Change.resets` and its diff starts with a
line ``! <field>: <live> -> <default>`` for each.  Nothing is reverted without a marked line.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import msgspec

from shared.resources import RESOURCE_KINDS, ResourceKind

# document key -> its kind; changes apply in this order, prunes in reverse.
KINDS: dict[str, ResourceKind] = {kind.manifest_key: kind for kind in RESOURCE_KINDS}
_META = ("name", "revision")


class ManifestError(ValueError):
    """The document is not a GTM config document."""


@dataclass(frozen=True)
class Reset:
    """A field the document leaves out, live at another value than its default: applying resets it."""

    field: str  # the resource's field path, as the REST API names it: ``addresses[0].mode``
    current: Any  # the live value (set outside the document)
    default: Any  # what the document's resource has there: the field's default

    def line(self) -> str:
        """The diff's marker line for this reset."""
        return (f"! {self.field}: {_short(self.current)} -> {_short(self.default)}"
                "  (not in the document, changed outside it: reset to the default)")


Action = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Change:
    """One step of a plan: ``create``, ``update`` or ``delete`` a resource."""

    action: Action
    kind: str
    name: str
    body: dict[str, Any] | None
    diff: str = ""  # updates: the ``!`` lines of the resets, then a unified diff of current -> desired
    resets: tuple[Reset, ...] = ()


@cache
def _yaml_loader() -> type[Any]:
    """YAML's safe loader, keeping timestamps as the strings written (the API parses RFC 3339 itself)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader


def parse(text: str) -> Any:
    """Parse the text of a YAML or JSON document (not yet checked: :func:`from_mapping` does that)."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader()) or {}  # a SafeLoader: builds plain data only
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML or JSON: {exc}") from None


def load(text: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Parse a YAML or JSON document into ``{kind: {name: body}}`` (singletons under name "")."""
    return from_mapping(parse(text))


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
    out = {k: v for k, v in msgspec.to_builtins(value).items() if k not in _META}
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
            written = _desired_check_overrides(body)
            want = normalize(kind, written)
            if have is None:
                changes.append(Change("create", kind, name, body))
                continue
            got = normalize(kind, have)
            if got != want:
                resets = tuple(omitted(written, got, want))
                diff = "\n".join([*(r.line() for r in resets), _diff(got, want)])
                changes.append(Change("update", kind, name, body, diff, resets))
    if prune:
        for kind in reversed([k for k, spec in KINDS.items() if not spec.singleton]):
            for name in current.get(kind, {}):
                if kind in desired and name not in desired[kind] or kind not in desired:
                    changes.append(Change("delete", kind, name, None))
    return changes


def omitted(written: Any, got: Any, want: Any, path: str = "") -> list[Reset]:
    """Where live ``got`` and desired ``want`` differ only because the ``written`` body leaves a field out.

    Lists of objects are walked item by item, each document item against the live item of the
    same ``name`` (addresses) or ``pool`` (a domain's pools), else at the same place.
    """
    if got == want or not (isinstance(written, dict) and isinstance(got, dict) and isinstance(want, dict)):
        return []
    out: list[Reset] = []
    for key in [k for k in want if k in got and got[k] != want[k]]:
        where = f"{path}.{key}" if path else key
        if key not in written:
            out.append(Reset(where, got[key], want[key]))
        elif isinstance(written[key], list) and isinstance(got[key], list) and isinstance(want[key], list):
            for i, (item, wanted) in enumerate(zip(written[key], want[key], strict=False)):
                out += omitted(item, _same_item(got[key], wanted, i), wanted, f"{where}[{i}]")
        else:
            out += omitted(written[key], got[key], want[key], where)
    return out


def _same_item(items: list[Any], item: Any, i: int) -> Any:
    """The live item that the document's ``item`` (at place ``i``) describes, or None."""
    for key in ("name", "pool"):
        if isinstance(item, dict) and key in item:
            return next((x for x in items if isinstance(x, dict) and x.get(key) == item[key]), None)
    return items[i] if i < len(items) else None


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff(before: Any, after: Any) -> str:
    a = json.dumps(before, indent=2, sort_keys=True, default=str).splitlines()
    b = json.dumps(after, indent=2, sort_keys=True, default=str).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "current", "desired", lineterm="", n=2))
