"""The audit trail (pure): who writes through what (:class:`Actor`), and what a write changed (:func:`diff`).

The HTTP middleware and the ``config.apply`` subscriber say who is acting for the duration of a
request (:func:`acting`); the store records :func:`current_actor` in the operation event of every
write it makes meanwhile, unless its caller passes an ``actor`` itself.  So the REST handlers,
``POST /api/v1/apply`` and ``config.apply`` need not hand the actor down through every call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.messages import FieldChange

VIAS = ("rest", "console", "apply", "config.apply")
VIA_HEADER = "X-GTM-Via"  # the console sends "console"; any other value counts as plain REST
NATS_ACTOR = "nats"  # who, for config.apply, when NATS does not say which user sent it

# Lists whose items have a key: summarised by key instead of shown whole.
KEYED_LISTS: dict[str, str] = {"addresses": "name", "pools": "pool", "entries": "cidr"}
INLINE_MAX = 512  # JSON bytes up to which a value is shown as it is (a longer string is cut to this many characters)
NAMES_MAX = 20  # keys listed per added / removed / changed
_NOT_DIFFED = ("name", "revision")  # in the event itself
SECRET_FIELDS = frozenset({"password", "secret", "token"})  # recorded as changed, never their values
REDACTED = "(secret)"


@dataclass(frozen=True)
class Actor:
    """Who makes a write (a token's name, a client address, a NATS user) and through what."""

    who: str = ""
    via: str = "rest"
    client: str = ""


_ANONYMOUS = Actor()
_current: ContextVar[Actor | None] = ContextVar("gtm_config_actor", default=None)


def current_actor() -> Actor:
    """The actor of the request being served (plain REST, nobody named, outside any)."""
    return _current.get() or _ANONYMOUS


@contextlib.contextmanager
def acting(actor: Actor) -> Iterator[Actor]:
    """Make ``actor`` the :func:`current_actor` inside the block (this task and what it awaits)."""
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def diff(before: Any, after: Any) -> list[FieldChange]:
    """The top-level fields that differ between two versions of a resource (None: it did not exist).

    A create lists every field (``before`` null), a delete every field (``after`` null).
    """
    old, new = _fields(before), _fields(after)
    out: list[FieldChange] = []
    for field in [*new, *(f for f in old if f not in new)]:
        was, now = old.get(field), new.get(field)
        if was == now:
            continue
        if field in SECRET_FIELDS:
            out.append(FieldChange(field=field, before=REDACTED if was else was, after=REDACTED if now else now))
        elif field in KEYED_LISTS and isinstance(was or [], list) and isinstance(now or [], list):
            out.append(_list_change(field, was or [], now or [], KEYED_LISTS[field]))
        else:
            out.append(FieldChange(field=field, before=_shown(was), after=_shown(now)))
    return out


def _fields(resource: Any) -> dict[str, Any]:
    """A resource's top-level fields (Struct values kept as they are: comparing them is cheap)."""
    if resource is None:
        return {}
    if isinstance(resource, msgspec.Struct):
        return {f: getattr(resource, f) for f in resource.__struct_fields__ if f not in _NOT_DIFFED}
    return {k: v for k, v in resource.items() if k not in _NOT_DIFFED} if isinstance(resource, dict) else {}


def _shown(value: Any) -> Any:
    """``value`` as JSON builtins when short; else a cut string or a count of items."""
    value = msgspec.to_builtins(value)
    if len(msgspec.json.encode(value)) <= INLINE_MAX:
        return value
    if isinstance(value, str):
        return value[:INLINE_MAX] + "…"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return f"{{{len(value)} fields}}"
    return value


def _list_change(field: str, was: list[Any], now: list[Any], key: str) -> FieldChange:
    """A keyed list's change: lengths, and the keys of the items added, removed and changed."""
    old, new = _keyed(was, key), _keyed(now, key)
    if old is None or new is None:  # items without their key: not summarisable by key
        return FieldChange(field=field, before=_shown(was), after=_shown(now))
    added = [k for k in new if k not in old]
    removed = [k for k in old if k not in new]
    changed = [k for k in new if k in old and new[k] != old[k]]
    return FieldChange(
        field=field,
        before=len(was),
        after=len(now),
        added=_capped(added),
        removed=_capped(removed),
        changed=_capped(changed),
        reordered=not (added or removed or changed),  # the lists differ, yet no item did: the order
    )


def _keyed(items: list[Any], key: str) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for item in items:
        name = item.get(key) if isinstance(item, dict) else getattr(item, key, None)
        if not isinstance(name, str):
            return None
        out[name] = item
    return out


def _capped(names: list[str]) -> list[str]:
    if len(names) <= NAMES_MAX:
        return names
    return [*names[:NAMES_MAX], f"(+{len(names) - NAMES_MAX} more)"]
