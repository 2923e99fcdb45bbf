"""Client subnet -> region, by longest-prefix match over the topology table (no I/O)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import msgspec

from services.edge import wire
from shared.resources import Topology

topology_decoder = msgspec.json.Decoder(Topology)

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


class RegionMap:
    """Longest-prefix match of IPv4 and IPv6 addresses to region names."""

    __slots__ = ("_levels", "size", "skipped")

    def __init__(self, entries: Sequence[tuple[str, str]] = ()) -> None:
        # family -> [(prefix length, {address >> (bits - prefix length): region})], longest first
        levels: dict[int, dict[int, dict[int, str]]] = {wire.FAMILY_IPV4: {}, wire.FAMILY_IPV6: {}}
        self.size = 0
        self.skipped: list[str] = []  # entries whose CIDR does not parse
        for cidr, region in entries:
            try:
                net = ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                self.skipped.append(cidr)
                continue
            family = wire.FAMILY_IPV4 if net.version == 4 else wire.FAMILY_IPV6
            key = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
            # The first entry of a prefix wins, as it would in a table read top-down.
            if levels[family].setdefault(net.prefixlen, {}).setdefault(key, region) == region:
                self.size += 1
        self._levels = {f: sorted(by_len.items(), reverse=True) for f, by_len in levels.items()}

    @classmethod
    def from_topology(cls, topology: Topology) -> RegionMap:
        """The map of a :class:`shared.resources.Topology`."""
        return cls([(e.cidr, e.region) for e in topology.entries])

    @classmethod
    def from_value(cls, value: bytes | None) -> RegionMap:
        """The map of a stored topology value (None or empty: no topology); raise msgspec's errors if bad."""
        return cls.from_topology(topology_decoder.decode(value)) if value else EMPTY

    def lookup(self, family: int, address: bytes, bits: int | None = None) -> str:
        """Region of ``address`` (4 or 16 bytes); only prefixes no longer than ``bits`` match; "" if none."""
        return self.find(family, address, bits)[0]

    def find(self, family: int, address: bytes, bits: int | None = None) -> tuple[str, int]:
        """(region, prefix length of the entry that matched) of ``address``, as :meth:`lookup`; ("", 0) if none."""
        levels = self._levels.get(family)
        if not levels:
            return "", 0
        width = len(address) * 8
        value = int.from_bytes(address, "big")
        limit = width if bits is None else bits
        for length, nets in levels:
            if length <= limit:
                region = nets.get(value >> (width - length))
                if region is not None:
                    return region, length
        return "", 0

    def locate(self, ecs: wire.ClientSubnet | None, client: object) -> str:
        """Region of a query: by its ECS subnet when it has a usable one, else by its source address."""
        if ecs is not None and ecs.source:
            return self.lookup(ecs.family, ecs.padded(), ecs.source)
        family, address = client_address(client)
        return self.lookup(family, address) if address else ""


def client_address(client: object) -> tuple[int, bytes]:
    """(family, packed address) of a socket peer address tuple; (0, b"") when it is not an IP peer."""
    if not isinstance(client, tuple) or not client or not isinstance(client[0], str):
        return 0, b""
    host = client[0]
    try:
        if ":" not in host:
            return wire.FAMILY_IPV4, socket.inet_pton(socket.AF_INET, host)
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return 0, b""
    if packed.startswith(_V4_MAPPED):  # a dual-stack socket's view of an IPv4 client
        return wire.FAMILY_IPV4, packed[12:]
    return wire.FAMILY_IPV6, packed


EMPTY = RegionMap()
