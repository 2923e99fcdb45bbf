"""Response rate limiting (RRL, as in BIND and Knot): how many UDP replies each client subnet gets.

Each client subnet (IPv4 /24, IPv6 /56 by default) may have ``rate`` replies per second,
counted per one-second epoch of a coarse clock the event loop ticks (so the check reads
no clock: one dict lookup and an integer increment). A reply over the limit is limited:
every ``slip``-th limited reply goes out truncated (TC=1, no records) so a real client
retries over TCP, the others are dropped. Limited replies are still counted, as debt
paid at ``rate`` per second up to ``window_s`` seconds' worth, so a subnet that floods
stays limited until its rate averaged over the window is back under the limit. A subnet
idle for ``window_s`` has paid everything, so it is forgotten.

The table is bounded: the clock tick forgets idle subnets (every window, or every second
while the table is full); while it is full, new subnets share one counter.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Hashable, Iterable

from services.edge import wire
from services.edge.stats import RrlCounts
from shared.settings import RrlSettings

PASS, DROP, SLIP = 0, 1, 2
_NEVER = -(1 << 29)  # the exempt entry's count at each second: no number of replies in one brings it to the rate
MAX_ENTRIES = 100_000  # about 20 MB at most
DEFAULTS = RrlSettings()  # each default written once, in shared/settings.py

_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d, an IPv4 client on a dual-stack socket
_aton = socket.inet_aton
_ntoa = socket.inet_ntoa
_pton = socket.inet_pton
_AF_INET6 = socket.AF_INET6

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RrlError(ValueError):
    """An RRL setting the edge cannot use."""


def parse_exempt(cidrs: Iterable[str]) -> list[Network]:
    """Networks from CIDRs (the settings checked them already: a bad one raises :class:`RrlError`)."""
    try:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
    except ValueError as exc:
        raise RrlError(f"GTM_EDGE_RRL_EXEMPT: {exc}") from None


class Limiter:
    """Per-subnet reply counters; :meth:`check` says PASS, DROP or SLIP for one more UDP reply."""

    __slots__ = (
        "_ceiling", "_counts", "_exempt", "_exempt_entry", "_get", "_last_sweep", "_max", "_prefix4", "_prefix6",
        "_rate", "_shift4", "_slash24", "_slip", "_table", "_window", "epoch",
    )  # fmt: skip

    def __init__(
        self,
        *,
        rate: int,
        window_s: int = DEFAULTS.window_s,
        slip: int = DEFAULTS.slip,
        ipv4_prefix: int = DEFAULTS.ipv4_prefix,
        ipv6_prefix: int = DEFAULTS.ipv6_prefix,
        exempt: Iterable[Network] = (),
        max_entries: int = MAX_ENTRIES,
        counts: RrlCounts | None = None,
        now: float = 0.0,
    ) -> None:
        if rate < 1 or window_s < 1 or slip < 0 or max_entries < 1:
            raise RrlError("RRL needs rate >= 1, window_s >= 1, slip >= 0, max_entries >= 1")
        if not 0 <= ipv4_prefix <= 32 or not 0 <= ipv6_prefix <= 128:
            raise RrlError("RRL prefixes must be 0-32 (IPv4) and 0-128 (IPv6)")
        self.epoch = self._last_sweep = int(now)  # the coarse clock: whole monotonic seconds
        self._rate = int(rate)
        self._window = int(window_s)
        self._ceiling = self._rate * self._window  # the most a subnet can owe: paid within the window
        self._slip = slip
        self._prefix4, self._prefix6 = ipv4_prefix, ipv6_prefix
        self._shift4 = 32 - ipv4_prefix
        self._slash24 = ipv4_prefix == 24  # the default: the key is the address text up to its last dot
        self._exempt = list(exempt)
        self._max = max_entries
        self._counts = counts if counts is not None else RrlCounts()
        # subnet key -> [epoch, replies counted (this epoch + debt), limited replies], or the exempt entry.
        # Keys: str or int for IPv4 (one kind per limiter), bytes for IPv6, None for the shared counter.
        self._table: dict[Hashable, list[int]] = {None: [self.epoch, 0, 0]}
        self._get = self._table.get
        # Shared by exempt subnets: always in the current epoch, its count never near the rate.
        self._exempt_entry = [self.epoch, _NEVER, 0]

    @property
    def counts(self) -> RrlCounts:
        """Drop and slip counters."""
        return self._counts

    def __len__(self) -> int:
        return len(self._table) - 1  # not the shared counter

    def tick(self, now: float) -> None:
        """Move the coarse clock to monotonic ``now``; on a new epoch, forget idle subnets when due."""
        epoch = int(now)
        if epoch == self.epoch:
            return
        self.epoch = self._exempt_entry[0] = epoch
        self._exempt_entry[1] = _NEVER
        if epoch - self._last_sweep >= self._window or len(self._table) > self._max:
            self.sweep()

    def check(self, host: str) -> int:
        """The fate of one more UDP reply to ``host`` (an IP address string) in the current epoch."""
        try:
            if ":" in host:
                key = self._key6(host)
            elif self._slash24:
                key = host.rpartition(".")[0]
            else:
                key = self._key4(host)
        except (OSError, ValueError):
            return PASS  # not an address we can group: never let the limiter stop an answer
        return self.check_subnet(key, host)

    def subnet(self, host: str) -> Hashable | None:
        """The subnet ``host`` is counted in, for :meth:`check_subnet` (None: never limited: exempt, or not
        an address we can group). Worked out once per client by a caller that remembers clients."""
        try:
            key = self._key6(host) if ":" in host else self._key4(host)
        except (OSError, ValueError):
            return None
        return None if self._is_exempt(host) else key

    def check_subnet(self, key: Hashable, host: str) -> int:
        """:meth:`check` for a ``host`` whose subnet is ``key`` (from :meth:`subnet`)."""
        e = self._get(key)
        if e is None:
            e = self._first(key, host)
        if e[0] == self.epoch:
            n = e[1] = e[1] + 1
            if n <= self._rate:
                return PASS
            return self._limited(e)
        return self._renew(e)

    def _renew(self, e: list[int]) -> int:
        """The first reply of an epoch to a known subnet: pay its debt, then count the reply."""
        if e is self._exempt_entry:
            return PASS
        owed = e[1] - self._rate * (self.epoch - e[0])
        e[0] = self.epoch
        n = e[1] = max(0, owed) + 1
        if n <= self._rate:
            return PASS
        return self._limited(e)

    def _limited(self, e: list[int]) -> int:
        """A reply over the limit (already counted, as debt up to the ceiling): DROP or SLIP."""
        e[1] = min(e[1], self._ceiling)
        n = e[2] = e[2] + 1
        if self._slip and not n % self._slip:
            self._counts.slip += 1
            return SLIP
        self._counts.drop += 1
        return DROP

    def _key4(self, host: str) -> Hashable:
        """The subnet key of an IPv4 address for any prefix length."""
        if self._slash24:
            return host.rpartition(".")[0]
        return int.from_bytes(_aton(host), "big") >> self._shift4

    def _key6(self, host: str) -> Hashable:
        """The subnet key of an IPv6 address (an IPv4-mapped one counts as IPv4)."""
        raw = _pton(_AF_INET6, host.partition("%")[0] if "%" in host else host)
        if raw[:12] == _MAPPED:
            return self._key4(_ntoa(raw[12:]))
        whole, bits = divmod(self._prefix6, 8)
        if not bits:
            return raw[:whole]
        return raw[:whole] + bytes((raw[whole] & (0xFF << (8 - bits)) & 0xFF,))

    def _first(self, key: Hashable, host: str) -> list[int]:
        """The entry of a subnet not in the table: new, exempt, or (table full) the shared one."""
        exempt = self._is_exempt(host)
        if len(self._table) > self._max:  # a flood of new subnets until the next sweep
            return self._exempt_entry if exempt else self._table[None]
        e = self._table[key] = self._exempt_entry if exempt else [self.epoch, 0, 0]
        return e

    def _is_exempt(self, host: str) -> bool:
        """Whether the client subnet of ``host`` overlaps an exempt network."""
        if not self._exempt:
            return False
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        prefix = self._prefix4 if ip.version == 4 else self._prefix6
        net = ipaddress.ip_network((ip, prefix), strict=False)
        return any(net.version == x.version and net.overlaps(x) for x in self._exempt)

    def sweep(self) -> int:
        """Forget subnets idle for a whole window (they owe nothing); return how many."""
        self._last_sweep = self.epoch
        cutoff = self.epoch - self._window
        table = self._table
        exempt = self._exempt_entry  # forgotten too: their exemption is worked out again
        idle = [k for k, e in table.items() if k is not None and (e is exempt or e[0] <= cutoff)]
        for k in idle:
            del table[k]
        return len(idle)


_SLIP_COUNTS = (bytes(8), b"\x00\x01" + bytes(6))  # QD, AN, NS, AR counts without and with the question
_SLIP_COUNTS_EDNS = (bytes(6) + b"\x00\x01", b"\x00\x01" + bytes(4) + b"\x00\x01")


def limited(verdict: int, reply: bytes) -> bytes | None:
    """What a reply the limiter did not PASS becomes: nothing (DROP), or its truncated form (SLIP:
    a real client retries over TCP, which is never limited).  Called only off the common path."""
    return None if verdict == DROP else truncated(reply)


def truncated(reply: bytes) -> bytes:
    """``reply`` cut down to what a slipped response carries: header with TC, question, OPT if any."""
    if len(reply) < wire.HEADER_LEN:
        return reply
    qdcount = 1 if reply[4:6] == b"\x00\x01" else 0
    end = wire.HEADER_LEN
    if qdcount:
        try:
            end = wire.skip_name(reply, end) + 4
        except wire.Malformed:
            end = len(reply) + 1
        if end > len(reply):
            end, qdcount = wire.HEADER_LEN, 0
    if reply[10:12] == b"\x00\x00":
        counts, opt = _SLIP_COUNTS[qdcount], b""
    else:  # the edge's additional section is only ever its OPT
        counts, opt = _SLIP_COUNTS_EDNS[qdcount], wire.OPT
    return reply[:2] + bytes((reply[2] | wire.TC, reply[3])) + counts + reply[wire.HEADER_LEN : end] + opt


def from_settings(settings: RrlSettings, counts: RrlCounts) -> Limiter | None:
    """The limiter of the settings, or None when RRL is off (rate 0)."""
    if settings.responses_per_s == 0:
        return None
    return Limiter(
        rate=settings.responses_per_s,
        window_s=settings.window_s,
        slip=settings.slip,
        ipv4_prefix=settings.ipv4_prefix,
        ipv6_prefix=settings.ipv6_prefix,
        exempt=parse_exempt(settings.exempt),
        counts=counts,
        now=time.monotonic(),
    )
