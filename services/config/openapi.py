"""The REST API's OpenAPI 3.1 document, generated (pure): schemas from the msgspec Structs, paths from the kinds.

Nothing here restates a resource's fields.  A request body is the Struct the API decodes
(:attr:`Kind.body <shared.resources.ResourceKind.body>`, :class:`~services.config.apply.DocumentRequest`);
a resource as answered is its stored Struct with every field (``render`` fills in the defaults),
plus ``name`` and ``revision``; a merge-patch is the body with every field optional and nullable;
an event is its message Struct as :func:`~services.config.views.render_event` shows it (``kind``,
``at`` as RFC 3339, ``message``); an error is :class:`~services.config.errors.ErrorBody`, with the
codes of :data:`~services.config.errors.STATUS_FOR_CODE` and the descriptions of the ApiError
classes.  A field added to a Struct appears here by itself.
"""

from __future__ import annotations

import copy
import importlib.metadata
from functools import cache
from typing import Any, Literal

import msgspec
from msgspec import Struct

from services.config.apply import ApplyResult, DocumentRequest
from services.config.codec import API_BASE, DOMAIN, KINDS, MANIFEST_KINDS, Kind
from services.config.console import STATIC_FILES
from services.config.errors import STATUS_FOR_CODE, ApiError, ErrorBody
from services.config.lines import LineCatalog, LineLookup
from services.config.views import EVENT_KINDS, MAX_LIMIT, DomainStatus, EventsQuery
from shared.messages import HealthLogEntry, OperationEvent, SwitchEvent
from shared.resources import NAME_RE

OPENAPI_PATH = f"{API_BASE}/openapi.json"
REF = "#/components/schemas/{name}"
EVENT_MESSAGES: dict[str, type[Struct]] = {"switch": SwitchEvent, "operation": OperationEvent}  # as render_event
CONSOLE_FILES_TYPES = tuple(sorted({t.split(";")[0] for t in STATIC_FILES.values()}))

class Health(Struct, kw_only=True, frozen=True):
    """``GET /healthz``."""

    status: Literal["ok"]


class Readiness(Struct, kw_only=True, frozen=True):
    """``GET /readyz``: ``ready``, or ``not_ready`` (503) with the reason."""

    status: Literal["ready", "not_ready"]
    reason: str = ""


# -- schemas ---------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def _camel(word: str) -> str:
    return "".join(part.capitalize() for part in word.split("_"))


def _resource_name(kind: Kind) -> str:
    return f"{_camel(kind.resource)}Resource"


def _refs_in(schema: Any) -> set[str]:
    """Names of the components ``schema`` refers to, directly or nested."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                found.add(ref.rsplit("/", 1)[-1])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _renamed_refs(schema: Any, suffix: str) -> Any:
    """``schema`` with every component reference ``X`` turned into ``X<suffix>``."""
    if isinstance(schema, dict):
        out = {k: _renamed_refs(v, suffix) for k, v in schema.items()}
        if isinstance(schema.get("$ref"), str):
            out["$ref"] = schema["$ref"] + suffix
        return out
    if isinstance(schema, list):
        return [_renamed_refs(v, suffix) for v in schema]
    return schema


def _as_rendered(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema as the API renders it: every field present (defaults filled in)."""
    out: dict[str, Any] = _renamed_refs(copy.deepcopy(schema), "View")
    out["required"] = list(out.get("properties", {}))
    return out


def _views(components: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    """``XView`` for every component reachable from ``roots`` (excluded): what responses nest."""
    views: dict[str, Any] = {}
    todo = sorted({name for root in roots for name in _refs_in(components[root])})
    while todo:
        name = todo.pop()
        if f"{name}View" in views:
            continue
        views[f"{name}View"] = _as_rendered(components[name])
        todo.extend(_refs_in(components[name]))
    return views


def _resource_view(kind: Kind, components: dict[str, Any]) -> dict[str, Any]:
    """A resource as GET, PUT and PATCH answer it."""
    view = _as_rendered(components[kind.stored.__name__])
    view["title"] = _resource_name(kind)
    props = view["properties"]
    props.pop("name", None)
    props.pop("revision", None)
    if not kind.singleton:
        props["name"] = {"type": "string"} if kind.fqdn_names else {"type": "string", "pattern": NAME_RE}
    props["revision"] = {"type": "integer", "minimum": 0, "description": "The KV revision; the ETag quotes it."}
    view["required"] = list(props)
    return view


def _patch_of(name: str, components: dict[str, Any], out: dict[str, Any]) -> str:
    """``XPatch``: a JSON merge-patch of component ``X`` (every field optional, null removes it)."""
    patch_name = f"{name}Patch"
    if patch_name in out:
        return patch_name
    schema = copy.deepcopy(components[name])
    out[patch_name] = schema
    schema["title"] = patch_name
    schema["description"] = f"A JSON merge-patch (RFC 7396) of a {name}: null removes a field (back to its default)."
    schema["required"] = []
    for field, prop in schema.get("properties", {}).items():
        prop.pop("default", None)
        options = prop.get("anyOf", [prop])
        patched = [
            _ref(_patch_of(o["$ref"].rsplit("/", 1)[-1], components, out)) if "$ref" in o else o
            for o in options
            if o != {"type": "null"}
        ]
        schema["properties"][field] = {"anyOf": [*patched, {"type": "null"}]}
    return patch_name


def _event_view(kind: str, struct: type[Struct], components: dict[str, Any]) -> dict[str, Any]:
    """An event as ``GET /events`` shows it: the message's fields, ``at`` in RFC 3339, its ``kind`` and text."""
    schema: dict[str, Any] = copy.deepcopy(components[struct.__name__])
    tag_field = struct.__struct_config__.tag_field
    props: dict[str, Any] = schema["properties"]
    if tag_field is not None:
        props.pop(tag_field, None)
    props["at"] = {"type": "string", "format": "date-time"}
    props.setdefault("message", {"type": "string"})
    schema["properties"] = {"kind": {"const": kind}, **props}
    required = {r for r in schema.get("required", []) if r != tag_field}
    schema["required"] = sorted(required | {"kind", "at", "domain", "message"})
    schema["title"] = f"{struct.__name__}View"
    return schema


def _entry(kind: Kind, components: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """A resource of a document: its PUT body, where ``name`` and ``revision`` are metadata (the key names it)."""
    name = f"{kind.body.__name__}Entry"
    schema = copy.deepcopy(components[kind.body.__name__])
    schema["title"] = name
    meta = {"description": "Metadata: the document's key names the resource; not compared."}
    schema["properties"].update(name=meta, revision=meta)
    out[name] = schema
    return _ref(name)


def _document_schema(components: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """``DocumentRequest.document``: each kind's resources by name (or listed with ``name``); the topology as is."""
    props: dict[str, Any] = {}
    for key, kind in MANIFEST_KINDS.items():
        body = _entry(kind, components, out)
        if kind.singleton:
            props[key] = {"anyOf": [body, {"type": "null"}]}
        else:
            props[key] = {
                "anyOf": [
                    {"type": "object", "additionalProperties": {"anyOf": [body, {"type": "null"}]}},  # null: {}
                    {"type": "array", "items": {"allOf": [body, {"required": ["name"]}]}},
                    {"type": "null"},
                ]
            }
    return {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "description": "A config document (gtm.yaml as JSON), as `gtmctl apply` takes it.",
    }


def schemas() -> dict[str, Any]:
    """Every component schema of the document."""
    types: list[Any] = [
        *(k.body for k in KINDS.values()),
        *(k.stored for k in KINDS.values()),
        *EVENT_MESSAGES.values(),
        DocumentRequest,
        ApplyResult,
        DomainStatus,
        LineCatalog,
        LineLookup,
        HealthLogEntry,
        ErrorBody,
        Health,
        Readiness,
    ]
    _, components = msgspec.json.schema_components(types, ref_template=REF)
    messages = {s.__name__ for s in EVENT_MESSAGES.values()}  # shown as their views only
    out: dict[str, Any] = {k: v for k, v in components.items() if k not in messages}
    out.update(_views(components, [k.stored.__name__ for k in KINDS.values()]))
    for kind in KINDS.values():
        out[_resource_name(kind)] = _resource_view(kind, components)
        if not kind.singleton:
            _patch_of(kind.body.__name__, components, out)
    for name, struct in EVENT_MESSAGES.items():
        out[f"{struct.__name__}View"] = _event_view(name, struct, components)
    out["DocumentRequest"]["properties"]["document"] = _document_schema(components, out)
    log_view = out["HealthLogEntryView"] = _as_rendered(components.pop("HealthLogEntry"))
    out.pop("HealthLogEntry", None)
    log_view["properties"]["at"] = {"type": "string", "format": "date-time"}
    log_view["properties"].pop("type", None)  # the message tag is not rendered
    log_view["required"] = [p for p in log_view["required"] if p != "type"]
    out["ErrorDetail"]["properties"]["code"]["enum"] = list(STATUS_FOR_CODE)
    return out


# -- operations ------------------------------------------------------------------------------

ERROR_DESCRIPTIONS: dict[int, str] = {cls.status: (cls.__doc__ or cls.code) for cls in ApiError.__subclasses__()}
# What every request may meet: headers it cannot read (400), and no or a wrong token, or a
# non-loopback Host or Origin on an API without tokens (403).
COMMON_ERRORS = (400, 401, 403)
PUBLIC: list[dict[str, list[str]]] = []  # security of an operation open to all


def _headers() -> dict[str, Any]:
    return {
        "X-Request-Id": {
            "description": "The request's id: the one sent (1-128 visible ASCII characters) or a new one.",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
        }
    }


def _json(schema: dict[str, Any], description: str, *, etag: bool = False) -> dict[str, Any]:
    headers = _headers()
    if etag:
        headers["ETag"] = {
            "description": "The resource's revision, quoted: send it back as If-Match.",
            "required": True,
            "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
        }
    return {"description": description, "headers": headers, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted({*COMMON_ERRORS, *statuses}):
        response = _json(_ref("ErrorBody"), ERROR_DESCRIPTIONS.get(status, "An error."))
        if status == 401:
            response["headers"]["WWW-Authenticate"] = {"required": True, "schema": {"type": "string"}}
        out[str(status)] = response
    return out


def _params(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    request_id = {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "description": "Kept and echoed when 1-128 visible ASCII characters; otherwise a new id is made.",
        "schema": {"type": "string"},
    }
    return [*extra, request_id]


IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'The revision the write expects ("3", 3, W/"3", *, or a list); 412 when stale.',
    "schema": {"type": "string"},
}


def _name_param(kind: Kind) -> dict[str, Any]:
    schema: dict[str, Any] = (
        {"type": "string", "minLength": 1, "description": "A domain name (case and a trailing dot are ignored)."}
        if kind.fqdn_names
        else {"type": "string", "pattern": NAME_RE}
    )
    return {"name": "name", "in": "path", "required": True, "schema": schema}


def _body(schema: dict[str, Any], *media: str) -> dict[str, Any]:
    return {"required": True, "content": {m: {"schema": schema} for m in media or ("application/json",)}}


def _resource_paths(kind: Kind) -> dict[str, Any]:
    """The operations of one kind: list and item GET/PUT/PATCH/DELETE, or GET/PUT of a singleton."""
    word, view = _camel(kind.resource), _ref(_resource_name(kind))
    tags = [kind.collection]
    one = _json(view, f"The {kind.resource.replace('_', ' ')}.", etag=True)
    get: dict[str, Any] = {"operationId": f"get{word}", "tags": tags, "responses": {"200": one, **_errors(404, 503)}}
    put: dict[str, Any] = {
        "operationId": f"put{word}",
        "tags": tags,
        "requestBody": _body(_ref(kind.body.__name__)),
        "responses": {
            "200": _json(view, "Replaced.", etag=True),
            "201": _json(view, "Created.", etag=True),
            **_errors(409, 412, 413, 503),
        },
    }
    base = f"{API_BASE}/{kind.collection}"
    if kind.singleton:
        put["parameters"] = _params(IF_MATCH)
        return {base: {"parameters": _params(), "get": get, "put": put}}
    listed = {
        "type": "object",
        "properties": {kind.list_key: {"type": "array", "items": view}},
        "required": [kind.list_key],
    }
    item_params = [_name_param(kind)]
    get["parameters"] = _params(*item_params)
    put["parameters"] = _params(*item_params, IF_MATCH)
    patch = {
        "operationId": f"patch{word}",
        "tags": tags,
        "parameters": _params(*item_params, IF_MATCH),
        "requestBody": _body(_ref(f"{kind.body.__name__}Patch"), "application/merge-patch+json", "application/json"),
        "responses": {"200": _json(view, "Patched.", etag=True), **_errors(404, 409, 412, 413, 503)},
    }
    delete = {
        "operationId": f"delete{word}",
        "tags": tags,
        "parameters": _params(*item_params, IF_MATCH),
        "responses": {
            "204": {"description": "Deleted.", "headers": _headers()},
            **_errors(404, 409, 412, 503),
        },
    }
    list_op = {
        "operationId": f"list{word}",
        "tags": tags,
        "parameters": _params(),
        "responses": {"200": _json(listed, "Every one, by name."), **_errors(503)},
    }
    return {base: {"get": list_op}, base + "/{name}": {"get": get, "put": put, "patch": patch, "delete": delete}}


def _events_params() -> list[dict[str, Any]]:
    """The filters of ``GET /events``, from :class:`~services.config.views.EventsQuery`."""
    _, components = msgspec.json.schema_components([EventsQuery], ref_template=REF)
    refine: dict[str, dict[str, Any]] = {  # what parse_events_query checks beyond the types
        "kind": {"enum": ["", *EVENT_KINDS]},
        "limit": {"minimum": 1, "maximum": MAX_LIMIT},
    }
    params = []
    for name, schema in components[EventsQuery.__name__]["properties"].items():
        params.append({"name": name, "in": "query", "required": False, "schema": {**schema, **refine.get(name, {})}})
    return params


def _other_paths() -> dict[str, Any]:
    messages = EVENT_MESSAGES.values()
    events = {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": {"oneOf": [_ref(f"{s.__name__}View") for s in messages]}},
        },
        "required": ["events"],
    }
    fqdn = _name_param(DOMAIN)
    return {
        f"{API_BASE}/{DOMAIN.collection}/{{name}}/status": {
            "get": {
                "operationId": "getDomainStatus",
                "tags": [DOMAIN.collection],
                "parameters": _params(fqdn),
                "responses": {"200": _json(_ref("DomainStatus"), "The answer served and why."), **_errors(404, 503)},
            }
        },
        f"{API_BASE}/events": {
            "get": {
                "operationId": "listEvents",
                "tags": ["events"],
                "parameters": _params(*_events_params()),
                "responses": {"200": _json(events, "Switch and operation events, newest first."), **_errors(503)},
            }
        },
        f"{API_BASE}/health-logs": {
            "get": {
                "operationId": "listHealthLogs",
                "tags": ["health-logs"],
                "parameters": _params(
                    *({"name": n, "in": "query", "required": False, "schema": {"type": "string", **extra}}
                      for n, extra in (("pool", {"pattern": NAME_RE}), ("address", {"pattern": NAME_RE}),
                                       ("region", {"maxLength": 64}), ("since", {"format": "date-time"}))),
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ),
                "responses": {"200": _json({
                    "type": "object",
                    "properties": {"logs": {"type": "array", "items": _ref("HealthLogEntryView")},
                                   "truncated": {"type": "boolean"}},
                    "required": ["logs"],
                }, "Failed checks and health changes, newest first."), **_errors(503)},
            }
        },
        f"{API_BASE}/lines": {
            "get": {
                "operationId": "listLines",
                "tags": ["lines"],
                "parameters": _params(),
                "responses": {"200": _json(_ref("LineCatalog"), "The request-source lines there are."),
                              **_errors(503)},
            }
        },
        f"{API_BASE}/lines/lookup": {
            "get": {
                "operationId": "lookupLines",
                "tags": ["lines"],
                "parameters": _params({"name": "address", "in": "query", "required": True,
                                       "description": "An IPv4 or IPv6 address or subnet.",
                                       "schema": {"type": "string", "minLength": 1}}),
                "responses": {"200": _json(_ref("LineLookup"), "Where the address is and the lines it matches."),
                              **_errors(503)},
            }
        },
        f"{API_BASE}/apply": {
            "post": {
                "operationId": "applyDocument",
                "tags": ["apply"],
                "description": "Make the store match a config document, all-or-nothing. A refusal writes nothing; "
                "a write failing midway lists the changes already written as `applied` in the error body.",
                "parameters": _params(),
                "requestBody": _body(_ref("DocumentRequest")),
                "responses": {"200": _json(_ref("ApplyResult"), "Applied (or planned)."),
                              **_errors(404, 409, 412, 413, 503)},
            }
        },
        f"{API_BASE}/stream": {
            "get": {
                "operationId": "stream",
                "tags": ["console"],
                "description": "Server-Sent Events telling the console when to re-fetch.",
                "security": [{"bearer": []}, {"streamToken": []}],
                "parameters": _params({"name": "domain", "in": "query", "schema": {"type": "string"}}),
                "responses": {
                    "200": {"description": "An endless event stream.", "headers": _headers(),
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    **_errors(503),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "tags": ["meta"],
                "security": PUBLIC,
                "parameters": _params(),
                "responses": {"200": _json({"type": "object"}, "This document."), **_errors()},
            }
        },
    }


def _root_paths() -> dict[str, Any]:
    def public(op_id: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {"operationId": op_id, "tags": ["meta"], "security": PUBLIC, "parameters": _params(),
                "responses": responses}

    def text(media: tuple[str, ...], description: str) -> dict[str, Any]:
        return {"description": description, "headers": _headers(),
                "content": {m: {"schema": {"type": "string"}} for m in media}}

    console_file = {"name": "name", "in": "path", "required": True, "schema": {"enum": sorted(STATIC_FILES)}}
    page = text(("text/html",), "The console's page.")
    static = text(CONSOLE_FILES_TYPES, "One of the console's static files.")
    return {
        "/healthz": {"get": public("healthz", {"200": _json(_ref("Health"), "Alive."), **_errors()})},
        "/readyz": {
            "get": public("readyz", {
                "200": _json(_ref("Readiness"), "NATS is connected and the KV bucket answers."),
                "503": _json(_ref("Readiness"), "Not ready, and why."),
                **_errors(),
            })
        },
        "/metrics": {
            "get": {"operationId": "metrics", "tags": ["meta"], "parameters": _params(),
                    "responses": {"200": text(("text/plain",), "Prometheus metrics."), **_errors()}}
        },
        "/": {
            "get": {**public("console", {"200": page, **_errors()}), "tags": ["console"]},
            "head": {**public("consoleHead", {"200": page, **_errors()}), "tags": ["console"]},
        },
        "/console/{name}": {
            "get": {**public("consoleFile", {"200": static, **_errors(404)}), "tags": ["console"],
                    "parameters": _params(console_file)},
            "head": {**public("consoleFileHead", {"200": static, **_errors(404)}), "tags": ["console"],
                     "parameters": _params(console_file)},
        },
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of REST API v1."""
    paths: dict[str, Any] = {**_root_paths()}
    for kind in KINDS.values():
        paths.update(_resource_paths(kind))
    paths.update(_other_paths())
    try:
        version = importlib.metadata.version("gtm")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GTM REST API",
            "version": version,
            "description": "Self-hosted DNS Global Traffic Manager: pools, domains, health templates, alert "
            "targets and topology. Generated from the Structs the API decodes and renders. Every error is "
            "`{\"error\": {\"code\", \"message\", \"field\"}}`; every write takes `If-Match` and every resource "
            "answer carries an `ETag`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "GTM_API_TOKEN (or a token of GTM_API_TOKENS); none when the API has none."},
                "streamToken": {"type": "apiKey", "in": "query", "name": "token",
                                "description": "The token as ?token=, on the live stream only (EventSource)."},
            },
        },
    }


@cache
def openapi_json() -> bytes:
    """:func:`document` encoded once."""
    return msgspec.json.encode(document())
