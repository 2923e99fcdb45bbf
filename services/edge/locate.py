"""Where a client is, for request-source lines: its region, AS, country and continent (no I/O).

A :class:`ClientClass` is every line a client matches (``shared.lines.client_lines``) with
the prefix of the data that says so.  Classes are interned, so that an answer set can cache
its answer per class under the class's identity; a :class:`Locator` caches the class of each
resolver address and of each ECS subnet it has seen (bounded: cleared when full).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from services.edge import wire
from services.edge.topology import EMPTY, RegionMap, client_address
from shared import lines as linespec
from shared.geo import GeoDatabase, Location

CACHE_SIZE = 65_536  # client addresses and ECS subnets remembered (then forgotten all at once)
_FAMILY = {wire.FAMILY_IPV4: socket.AF_INET, wire.FAMILY_IPV6: socket.AF_INET6}


class ClientClass:
    """The lines one kind of client matches, most specific first (compared by identity once interned)."""

    __slots__ = ("matches", "region")

    def __init__(self, matches: tuple[linespec.Match, ...], region: str) -> None:
        self.matches = matches
        self.region = region  # for source_nearest ("" none)

    def __repr__(self) -> str:
        return f"ClientClass({', '.join(f'{m.line}/{m.prefix}' for m in self.matches)})"


UNKNOWN = ClientClass((linespec.Match(linespec.DEFAULT, 0),), "")


class Locator:
    """Client address or ECS subnet -> :class:`ClientClass`, by the topology table and a GeoIP database.

    ``geo`` is called once, the first time a client is located (loading a database costs
    ~0.1 s and ~60 MB: an edge without lines never pays it); it may return None (no data).
    """

    def __init__(self, regions: RegionMap = EMPTY, geo: Callable[[], GeoDatabase | None] | None = None) -> None:
        self.regions = regions
        self._geo_factory = geo
        self._geo: GeoDatabase | None = None
        self._geo_loaded = geo is None
        self._classes: dict[tuple[tuple[linespec.Match, ...], str], ClientClass] = {}
        self._by_host: dict[str, ClientClass] = {}
        self._by_subnet: dict[tuple[int, int, bytes], ClientClass] = {}

    def set_regions(self, regions: RegionMap) -> None:
        """Use another topology table (what was cached is forgotten)."""
        self.regions = regions
        self.clear()

    def clear(self) -> None:
        """Forget every cached client (the classes stay interned)."""
        self._by_host.clear()
        self._by_subnet.clear()

    @property
    def geo(self) -> GeoDatabase | None:
        """The GeoIP database, loaded on first use."""
        if not self._geo_loaded:
            self._geo_loaded = True
            assert self._geo_factory is not None
            self._geo = self._geo_factory()
        return self._geo

    def for_host(self, host: str) -> ClientClass:
        """The class of a socket peer's host (an IP address as text; anything else: :data:`UNKNOWN`)."""
        found = self._by_host.get(host)
        if found is None:
            family, packed = client_address((host,))
            found = self.classify(family, packed, None) if packed else UNKNOWN
            if len(self._by_host) >= CACHE_SIZE:
                self._by_host.clear()
            self._by_host[host] = found
        return found

    def locate(self, ecs: wire.ClientSubnet | None, client: object) -> ClientClass:
        """The class of a query: by its ECS subnet when it has a usable one, else by its source address."""
        if ecs is not None and ecs.source:
            key = (ecs.family, ecs.source, ecs.address)
            found = self._by_subnet.get(key)
            if found is None:
                found = self.classify(ecs.family, ecs.padded(), ecs.source)
                if len(self._by_subnet) >= CACHE_SIZE:
                    self._by_subnet.clear()
                self._by_subnet[key] = found
            return found
        if isinstance(client, tuple) and client and isinstance(client[0], str):
            return self.for_host(client[0])
        return UNKNOWN

    def classify(self, family: int, packed: bytes, bits: int | None) -> ClientClass:
        """The class of ``packed`` (4 or 16 bytes; only its first ``bits`` bits known, None: all)."""
        region, region_prefix = self.regions.find(family, packed, bits)
        location = Location()
        geo = self.geo
        if geo is not None and family in _FAMILY:
            try:
                location = geo.locate(socket.inet_ntop(_FAMILY[family], packed))
            except ValueError:
                location = Location()
        matches = linespec.client_lines(
            region=region,
            region_prefix=region_prefix,
            asn=location.asn,
            asn_prefix=location.asn_prefix,
            country=location.country,
            country_prefix=location.country_prefix,
            continent=location.continent,
        )
        key = (matches, region)
        cls = self._classes.get(key)
        if cls is None:
            if len(self._classes) >= CACHE_SIZE:  # bounded: a new generation of classes (answers recompute)
                self._classes.clear()
                self.clear()
            cls = self._classes[key] = ClientClass(matches, region)
        return cls
