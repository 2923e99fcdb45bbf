"""``GET /lines`` and ``GET /lines/lookup``: the request-source lines there are, and which an address matches.

The catalogue needs no database; a lookup loads the GeoIP database on first use (in a
thread: ~0.1 s) and reads the topology table for the custom region.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Mapping

import msgspec
from aiohttp import web
from msgspec import Struct

from services.config.errors import InvalidArgument
from shared import geo
from shared import lines as linespec
from shared.resources import Topology
from shared.settings import GeoipSettings


class ContinentLine(Struct, kw_only=True, frozen=True):
    """One continent and its line."""

    code: str
    name: str
    line: str


class CountryLine(Struct, kw_only=True, frozen=True):
    """One country (ISO 3166-1 alpha-2) and its line."""

    code: str
    name: str
    continent: str
    line: str


class LineCatalog(Struct, kw_only=True, frozen=True):
    """``GET /lines``: the kinds of line, most specific first, the continents, the countries, the custom regions."""

    kinds: list[str]
    continents: list[ContinentLine]
    countries: list[CountryLine]
    regions: list[str]  # of the topology table: region:NAME lines


class LineLookup(Struct, kw_only=True, frozen=True):
    """``GET /lines/lookup?address=``: where an address (or subnet) is, and the lines it matches."""

    address: str
    country: str | None
    country_name: str | None
    continent: str | None
    country_prefix: int | None  # of the database network that gave the country
    asn: int | None
    isp: str | None
    asn_prefix: int | None
    region: str | None  # of the topology table
    region_cidr: str | None  # the topology entry that gave it
    lines: list[str]  # most specific first, ending with default
    source: str  # the country database
    asn_source: str  # the ASN database ("" when there is none: asn:N lines match nothing)


@functools.lru_cache(maxsize=1)
def catalog(regions: tuple[str, ...]) -> bytes:
    """The catalogue, encoded (cached per set of regions)."""
    return msgspec.json.encode(
        LineCatalog(
            kinds=list(linespec.SPECIFICITY),
            continents=[ContinentLine(code=c, name=n, line=f"continent:{c}") for c, n in geo.CONTINENTS.items()],
            countries=[
                CountryLine(code=c, name=n, continent=k, line=f"country:{c}") for c, (n, k) in geo.COUNTRIES.items()
            ],
            regions=list(regions),
        )
    )


def topology_regions(topology: Topology | None) -> tuple[str, ...]:
    """The distinct regions of the topology table, sorted."""
    return tuple(sorted({e.region for e in topology.entries})) if topology else ()


def parse_address(query: Mapping[str, str]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The ``address`` parameter: an IP address (a /32 or /128) or a subnet; 400 naming it otherwise."""
    text = query.get("address", "").strip()
    if not text:
        raise InvalidArgument("address is required: an IPv4 or IPv6 address or subnet", "address")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not an IP address or subnet", "address") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        mapped = net.network_address.ipv4_mapped
        net = ipaddress.ip_network(f"{mapped}/{max(0, net.prefixlen - 96)}", strict=False)
    return net


def region_of(
    topology: Topology | None, net: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> tuple[str, str] | None:
    """(region, cidr) of the longest topology entry containing ``net`` (the first of equal ones), or None."""
    best: tuple[int, str, str] | None = None
    for entry in topology.entries if topology else []:
        try:
            cidr = ipaddress.ip_network(entry.cidr.strip(), strict=False)
        except ValueError:
            continue
        if cidr.version != net.version or not net.subnet_of(cidr):  # type: ignore[arg-type]
            continue
        if best is None or cidr.prefixlen > best[0]:
            best = (cidr.prefixlen, entry.region, str(cidr))
    return (best[1], best[2]) if best else None


def lookup(
    db: geo.GeoDatabase, topology: Topology | None, net: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> LineLookup:
    """Where ``net`` is (by its first address) and the lines it matches."""
    where = db.locate(str(net.network_address))
    region = region_of(topology, net)
    matches = linespec.client_lines(
        region=region[0] if region else "",
        asn=where.asn,
        country=where.country,
        continent=where.continent,
    )
    return LineLookup(
        address=str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net),
        country=where.country or None,
        country_name=geo.COUNTRIES[where.country][0] if where.country in geo.COUNTRIES else None,
        continent=where.continent or None,
        country_prefix=where.country_prefix or None,
        asn=where.asn or None,
        isp=where.isp or None,
        asn_prefix=where.asn_prefix or None,
        region=region[0] if region else None,
        region_cidr=region[1] if region else None,
        lines=[m.line for m in matches],
        source=db.source,
        asn_source=db.asn_source,
    )


async def load_database(settings: GeoipSettings) -> geo.GeoDatabase:
    """The GeoIP database (loaded once, in a thread); raise :class:`shared.geo.GeoError` if unreadable."""
    return await asyncio.get_running_loop().run_in_executor(None, geo.open_database, settings.db, settings.asn_db)


def json(body: bytes) -> web.Response:
    """A JSON response of an encoded body."""
    return web.Response(body=body, content_type="application/json")
