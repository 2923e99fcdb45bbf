"""Request-source lines: what they look like and which of them a client matches (pure, no I/O).

A line is ``default``, ``continent:XX``, ``country:CC``, ``asn:N`` or ``region:NAME`` (a
region of the topology table).  A client matches ``default`` always and, besides, the lines
of its region, its AS, its country and its continent; the most specific matching line that
has something to answer wins, in :data:`SPECIFICITY` order.  The scheduler decides an answer
per line; the edge picks the line per client (:func:`client_lines`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from shared.geo import CONTINENTS, COUNTRIES

DEFAULT = "default"
# Line kinds, most specific first: a custom region beats an ISP, an ISP a country, a country a continent.
SPECIFICITY = ("region", "asn", "country", "continent", DEFAULT)
_RANK = {kind: i for i, kind in enumerate(SPECIFICITY)}
_REGION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ASN_RE = re.compile(r"[1-9][0-9]{0,9}")
MAX_ASN = 2**32 - 1
MAX_LINES = 64  # per pool reference or address


class LineError(ValueError):
    """A line that is not one; the message says what would be."""


def check_line(line: str) -> str:
    """``line`` if it is a valid line; raise :class:`LineError` saying what is wrong (nothing is rewritten)."""
    if line == DEFAULT:
        return line
    kind, colon, value = line.partition(":")
    if not colon or kind not in _RANK:
        raise LineError(
            f"{line!r} is not a line: use default, continent:XX, country:CC, asn:N or region:NAME"
        )
    if kind == "continent":
        if value not in CONTINENTS:
            upper = value.upper()
            hint = f" (continent codes are upper case: continent:{upper})" if upper in CONTINENTS else ""
            raise LineError(f"{line!r}: unknown continent; one of {', '.join(CONTINENTS)}{hint}")
    elif kind == "country":
        if value not in COUNTRIES:
            hint = f" (country codes are upper case: country:{value.upper()})" if value.upper() in COUNTRIES else ""
            raise LineError(f"{line!r}: not an ISO 3166-1 alpha-2 country code{hint}")
    elif kind == "asn":
        if not _ASN_RE.fullmatch(value) or int(value) > MAX_ASN:
            raise LineError(f"{line!r}: an AS number is 1-{MAX_ASN}, written without leading zeros")
    elif not _REGION_RE.fullmatch(value):  # region
        raise LineError(f"{line!r}: region names are 1-64 of A-Za-z0-9._- (a region of the topology table)")
    return line


def check_lines(lines: Sequence[str]) -> None:
    """Check a list of lines: each valid, none twice, not empty, at most :data:`MAX_LINES`.

    Raises :class:`LineError` whose ``args[1]`` is the index of the offending line (-1: the list).
    """
    if not lines:
        raise LineError("lines must not be empty (leave it out for [\"default\"])", -1)
    if len(lines) > MAX_LINES:
        raise LineError(f"at most {MAX_LINES} lines", -1)
    seen: set[str] = set()
    for i, line in enumerate(lines):
        try:
            check_line(line)
        except LineError as exc:
            raise LineError(str(exc), i) from None
        if line in seen:
            raise LineError(f"line {line!r} is listed twice", i)
        seen.add(line)


def kind_of(line: str) -> str:
    """The kind of a valid line: ``region``, ``asn``, ``country``, ``continent`` or ``default``."""
    return line.partition(":")[0]


def rank(line: str) -> int:
    """How specific a line is: 0 (region) .. 4 (default)."""
    return _RANK[kind_of(line)]


def by_specificity(lines: Iterable[str]) -> list[str]:
    """Distinct lines, most specific first (then by name: a stable order to publish in)."""
    return sorted(set(lines), key=lambda line: (rank(line), line))


def is_default_only(lines: Sequence[str]) -> bool:
    """Whether a list of lines is the default one (what an entry without ``lines`` has)."""
    return len(lines) == 1 and lines[0] == DEFAULT


class Match(NamedTuple):
    """One line a client matches and the prefix length of the data entry that says so."""

    line: str
    prefix: int  # of the topology CIDR or database network (0: default, or not known)


def client_lines(
    *,
    region: str = "",
    region_prefix: int = 0,
    asn: int = 0,
    asn_prefix: int = 0,
    country: str = "",
    country_prefix: int = 0,
    continent: str = "",
) -> tuple[Match, ...]:
    """Every line a client matches, most specific first, ending with ``default``.

    The continent is known from the country, so it has the country's prefix.  ``default``
    carries the longest prefix of the others: whoever shares it matches the same lines.
    """
    out: list[Match] = []
    if region:
        out.append(Match(f"region:{region}", region_prefix))
    if asn:
        out.append(Match(f"asn:{asn}", asn_prefix))
    if country:
        out.append(Match(f"country:{country}", country_prefix))
    if continent:
        out.append(Match(f"continent:{continent}", country_prefix))
    out.append(Match(DEFAULT, max((m.prefix for m in out), default=0)))
    return tuple(out)


def first_match(matches: Sequence[Match], present: Iterable[str]) -> Match | None:
    """The most specific of a client's ``matches`` among the lines ``present`` (None: none of them)."""
    have = present if isinstance(present, set | frozenset | dict) else set(present)
    return next((m for m in matches if m.line in have), None)
