"""Request-source lines, table by table: the line grammar, the scheduler's answer per line, and the
edge's pick per client (ECS subnet or resolver address) with its ECS scope, on the built-in GeoIP data
and a topology table; all-down policies and domains that mix pool types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.rdatatype
import msgspec
import pytest

from services.edge.responder import Responder
from services.edge.table import AnswerTable
from services.edge.topology import RegionMap
from services.scheduler.decide import PoolView, decide_domain, evaluate_pool
from shared import geo
from shared import lines as linespec
from shared.messages import AddressState, AnswerSet
from shared.resources import Address, Domain, HealthCheck, Pool, PoolRef, ResourceError, validate_domain, validate_pool
from tests.test_geo import _write

CHECK = HealthCheck(interval_s=5)
NAME = "www.example.com"

# Real addresses the built-in data places (tests/test_geo.py pins them): China, Britain, the US, Japan.
CN_IP, GB_IP, US_IP = "1.2.4.8", "81.2.69.142", "8.8.8.8"


# -- the grammar --------------------------------------------------------------------------------

GOOD = ["default", "continent:AS", "continent:EU", "country:CN", "country:US", "asn:4134", "asn:4294967295",
        "region:cn-east", "region:A.b_c-1"]
BAD = {
    "": "is not a line",
    "Default": "is not a line",
    "city:Beijing": "is not a line",
    "country": "is not a line",
    "continent:XX": "unknown continent",
    "continent:as": "continent:AS",
    "country:cn": "country:CN",
    "country:ZZ": "not an ISO 3166-1 alpha-2",
    "country:CHN": "not an ISO 3166-1 alpha-2",
    "asn:0": "AS number",
    "asn:012": "AS number",
    "asn:4294967296": "AS number",
    "asn:AS4134": "AS number",
    "region:": "region names",
    "region:a b": "region names",
}


@pytest.mark.parametrize("line", GOOD)
def test_valid_lines_pass_unchanged(line: str) -> None:
    assert linespec.check_line(line) == line


@pytest.mark.parametrize(("line", "says"), BAD.items())
def test_invalid_lines_say_what_would_be_valid(line: str, says: str) -> None:
    with pytest.raises(linespec.LineError, match=says):
        linespec.check_line(line)


def test_specificity_orders_region_asn_country_continent_default() -> None:
    mixed = ["default", "continent:AS", "country:CN", "region:x", "asn:1", "country:AU"]
    assert linespec.by_specificity(mixed) == ["region:x", "asn:1", "country:AU", "country:CN", "continent:AS",
                                              "default"]


def pool_with(*addresses: Address, kind: str = "ipv4", **kw: Any) -> Pool:
    return Pool(type=kind, name="P", addresses=list(addresses), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lines", "field"),
    [(["country:cn"], "addresses[0].lines[0]"), (["default", "default"], "addresses[0].lines[1]"),
     ([], "addresses[0].lines")],
)
def test_a_bad_address_line_is_refused_naming_it(lines: list[str], field: str) -> None:
    with pytest.raises(ResourceError) as err:
        validate_pool(pool_with(Address(name="a", address="192.0.2.1", lines=lines)), "P")
    assert err.value.field == field


def test_a_bad_pool_reference_line_is_refused_naming_it() -> None:
    pools = {"P": pool_with()}
    domain = Domain(record_type="A", pools=[PoolRef(pool="P", lines=["default", "asn:x"])])
    with pytest.raises(ResourceError) as err:
        validate_domain(domain, NAME, pools)
    assert err.value.field == "pools[0].lines[1]"


def test_an_a_domain_may_use_a_domain_name_pool_but_a_cname_domain_no_ipv4_pool() -> None:
    pools = {"V4": pool_with(), "CDN": pool_with(kind="domain"), "V6": pool_with(kind="ipv6")}
    ok = Domain(record_type="A", pools=[PoolRef(pool="V4"), PoolRef(pool="CDN")])
    assert validate_domain(ok, NAME, pools).pools == ok.pools
    for record_type, pool in (("CNAME", "V4"), ("A", "V6"), ("AAAA", "V4")):
        with pytest.raises(ResourceError, match="needs") as err:
            validate_domain(Domain(record_type=record_type, pools=[PoolRef(pool=pool)]), NAME, pools)  # type: ignore[arg-type]
        assert err.value.field == "pools[0].pool"


def test_all_down_policy_and_fallback_pool_are_checked() -> None:
    pools = {"P": pool_with(), "SORRY": pool_with(), "V6": pool_with(kind="ipv6")}
    refs = [PoolRef(pool="P")]
    assert validate_domain(Domain(record_type="A", pools=refs), NAME, pools).all_down == "fail_open"
    named = validate_domain(Domain(record_type="A", pools=refs, all_down="fallback_pool", fallback_pool="SORRY"),
                            NAME, pools)
    assert (named.all_down, named.fallback_pool) == ("fallback_pool", "SORRY")
    sorry = "fallback_pool"
    cases = [
        (Domain(record_type="A", pools=refs, all_down=sorry), "needs the pool"),
        (Domain(record_type="A", pools=refs, fallback_pool="SORRY"), "only with"),
        (Domain(record_type="A", pools=refs, all_down="fail_closed", fallback_pool="SORRY"), "only with"),
        (Domain(record_type="A", pools=refs, all_down=sorry, fallback_pool="NOPE"), "does not exist"),
        (Domain(record_type="A", pools=refs, all_down=sorry, fallback_pool="V6"), "needs"),
    ]
    for domain, says in cases:
        with pytest.raises(ResourceError, match=says) as err:
            validate_domain(domain, NAME, pools)
        assert err.value.field == "fallback_pool"


# -- the scheduler: one answer per line -----------------------------------------------------------


def mkaddr(name: str, value: str, **kw: Any) -> Address:
    return Address(name=name, address=value, **{"health_check": CHECK, **kw})


def mkpool(name: str, *addrs: Address, kind: str = "ipv4", **kw: Any) -> Pool:
    return Pool(type=kind, name=name, addresses=list(addrs), **kw)  # type: ignore[arg-type]


def views_of(pools: dict[str, Pool], up: set[str]) -> dict[str, PoolView]:
    """Every pool evaluated with the addresses named in ``up`` available."""
    out = {}
    for name, pool in pools.items():
        states = {
            a.name: AddressState(name=a.name, address=a.address, available=a.name in up,
                                 reason="" if a.name in up else f"{a.name} down")
            for a in pool.addresses
        }
        out[name] = evaluate_pool(pool, states, current=None)
    return out


CN = mkpool("CN-DC", mkaddr("cn1", "192.0.2.1"))
EU = mkpool("EU-DC", mkaddr("eu1", "192.0.2.2"))
US = mkpool("US-DC", mkaddr("us1", "192.0.2.3"))
ISP = mkpool("ISP-DC", mkaddr("isp1", "192.0.2.4"))
EDGE = mkpool("EDGE-DC", mkaddr("edge1", "192.0.2.5"))
SORRY = mkpool("SORRY", mkaddr("sorry1", "192.0.2.99"))
CDN = mkpool("CDN", mkaddr("cdn1", "cdn.example.net"), kind="domain")
POOLS = {p.name or "": p for p in (CN, EU, US, ISP, EDGE, SORRY, CDN)}
EVERYONE = {"cn1", "eu1", "us1", "isp1", "edge1", "sorry1", "cdn1"}
LINED = Domain(
    record_type="A",
    enabled=True,
    pools=[
        PoolRef(pool="CN-DC", sequence=1, lines=["country:CN"]),
        PoolRef(pool="EU-DC", sequence=1, lines=["continent:EU"]),
        PoolRef(pool="ISP-DC", sequence=1, lines=["asn:64500"]),
        PoolRef(pool="EDGE-DC", sequence=1, lines=["region:edge-lab"]),
        PoolRef(pool="US-DC", sequence=2, lines=["default", "country:CN", "continent:EU"]),
    ],
)


def decide(domain: Domain, up: set[str], previous: AnswerSet | None = None) -> AnswerSet:
    return decide_domain(NAME, domain, revision=1, views=views_of(POOLS, up), previous=previous)


def by_line(answer: AnswerSet) -> dict[str, list[str]]:
    return {"default": answer.records, **{a.line: a.records for a in answer.lines}}


def test_each_line_is_answered_by_its_own_pools_and_default_by_the_default_pools() -> None:
    answer = decide(LINED, EVERYONE)
    assert [a.line for a in answer.lines] == ["region:edge-lab", "asn:64500", "country:CN", "continent:EU"]
    assert by_line(answer) == {
        "default": ["192.0.2.3"],
        "region:edge-lab": ["192.0.2.5"],
        "asn:64500": ["192.0.2.4"],
        "country:CN": ["192.0.2.1"],
        "continent:EU": ["192.0.2.2"],
    }
    assert not answer.fallback


def test_a_line_whose_pools_are_down_falls_to_its_next_pool_or_is_left_out() -> None:
    answer = decide(LINED, EVERYONE - {"cn1", "isp1"})
    lines = by_line(answer)
    assert lines["country:CN"] == ["192.0.2.3"]  # CN-DC down: US-DC is on country:CN too (sequence 2)
    assert "asn:64500" not in lines  # nothing of that line is up: its clients try their next line


def test_a_domain_without_lines_publishes_no_lines_exactly_as_before() -> None:
    plain = Domain(record_type="A", enabled=True, pools=[PoolRef(pool="CN-DC"), PoolRef(pool="US-DC", sequence=2)])
    answer = decide(plain, EVERYONE)
    assert answer.lines == [] and answer.records == ["192.0.2.1"]


def test_no_default_pool_up_applies_the_all_down_policy_to_the_top_level() -> None:
    up = EVERYONE - {"us1"}
    fail_open = decide(LINED, up)
    assert fail_open.fallback and fail_open.records == ["192.0.2.1"]  # the first enabled pool by sequence
    closed = decide(msgspec.structs.replace(LINED, all_down="fail_closed"), up)
    assert closed.fallback and closed.records == [] and closed.groups == []
    assert by_line(closed)["country:CN"] == ["192.0.2.1"]  # the lines with a pool up still answer
    sorry = decide(msgspec.structs.replace(LINED, all_down="fallback_pool", fallback_pool="SORRY"), up)
    assert sorry.fallback and sorry.pool == "SORRY" and sorry.records == ["192.0.2.99"]
    sorry_down = decide(msgspec.structs.replace(LINED, all_down="fallback_pool", fallback_pool="SORRY"),
                        up - {"sorry1"})
    assert sorry_down.pool == "SORRY" and sorry_down.records == ["192.0.2.99"]  # fails open on the fallback pool


def test_address_lines_inside_a_sequence_pool_choose_per_line() -> None:
    pool = mkpool(
        "MIX",
        mkaddr("cn", "192.0.2.11", sequence=1, lines=["country:CN"]),
        mkaddr("cn-b", "192.0.2.12", sequence=2, lines=["country:CN"]),
        mkaddr("world", "192.0.2.13", sequence=3),
        lb_strategy="sequence",
    )
    views = views_of({"MIX": pool}, {"cn", "cn-b", "world"})
    domain = Domain(record_type="A", enabled=True, pools=[PoolRef(pool="MIX")])
    answer = decide_domain(NAME, domain, revision=1, views=views, previous=None)
    (group,) = answer.groups
    assert group.records == ["192.0.2.11", "192.0.2.13"]
    assert group.record_lines == [["country:CN"], ["default"]]
    views = views_of({"MIX": pool}, {"cn-b", "world"})
    (group,) = decide_domain(NAME, domain, revision=1, views=views, previous=None).groups
    assert group.records == ["192.0.2.12", "192.0.2.13"]  # the next of the CN line


def test_an_a_domain_answers_a_domain_name_pool_as_cname() -> None:
    domain = Domain(record_type="A", enabled=True,
                    pools=[PoolRef(pool="US-DC", sequence=1), PoolRef(pool="CDN", sequence=2)])
    assert decide(domain, EVERYONE).groups[0].record_type == ""
    backup = decide(domain, EVERYONE - {"us1"})
    assert backup.pool == "CDN" and backup.groups[0].record_type == "CNAME"
    rr = decide(msgspec.structs.replace(domain, lb_strategy="round_robin"), EVERYONE)
    assert rr.records == ["192.0.2.3"]  # round robin merges the pools of the domain's own type first


# -- the edge: which line a client gets, and the ECS scope ---------------------------------------


@pytest.fixture(scope="module")
def asn_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ASN database placing 8.8.8.0/25 in AS 64500 (the built-in data has no AS numbers)."""
    path: Path = tmp_path_factory.mktemp("asn") / "asn.mmdb"
    return _write(path, "GeoLite2-ASN", [("8.8.8.0/25", {"autonomous_system_number": 64500,
                                                           "autonomous_system_organization": "Example ISP"})])


def lined_responder(asn_db: str, *sets: AnswerSet, topology: list[tuple[str, str]] = ()) -> Responder:  # type: ignore[assignment]
    table = AnswerTable(geo=lambda: geo.open_database("", asn_db))
    table.set_topology(None, RegionMap(list(topology)))
    for aset in sets:
        table.apply(aset)
    return Responder(table)


def ecs_ask(r: Responder, address: str, source: int, qtype: str = "A") -> tuple[list[str], int]:
    """(records, ECS scope) of a query from a resolver sending ``address/source``."""
    q = dns.message.make_query(NAME, qtype, use_edns=0, options=[dns.edns.ECSOption(address, source)])
    reply = r.answer(q.to_wire(), False, ("127.0.0.1", 5353))
    assert reply is not None
    msg = dns.message.from_wire(reply)
    (opt,) = [o for o in msg.options if o.otype == dns.edns.ECS]
    assert isinstance(opt, dns.edns.ECSOption)
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset), opt.scopelen


def plain_ask(r: Responder, resolver: str, qtype: str = "A", *, edns: bool = False) -> list[str]:
    q = dns.message.make_query(NAME, qtype, use_edns=0 if edns else False)
    reply = r.answer(q.to_wire(), False, (resolver, 5353))
    assert reply is not None
    return sorted(rd.to_text() for rrset in dns.message.from_wire(reply).answer for rd in rrset)


EDGE_CASES = [  # (client subnet, records, scope): the subnet's line, and the prefix of the data that decided
    ("1.2.4.0", 24, ["192.0.2.1"], 22),  # China: country:CN (1.2.4.0/22)
    ("81.2.69.0", 24, ["192.0.2.2"], 18),  # Britain: continent:EU (81.2.64.0/18)
    ("8.8.4.0", 24, ["192.0.2.3"], 15),  # the US: no line of its own -> default; its country entry is /15
    ("8.8.8.0", 25, ["192.0.2.4"], 25),  # AS 64500 (8.8.8.0/25) beats the country
    ("8.8.8.0", 24, ["192.0.2.4"], 25),  # the AS entry is longer than the subnet sent: the scope says so
    ("198.51.100.0", 24, ["192.0.2.5"], 24),  # the topology's region beats everything
    ("10.1.0.0", 16, ["192.0.2.3"], 16),  # a private subnet: default, scope = what was sent
]


@pytest.mark.parametrize(("address", "source", "records", "scope"), EDGE_CASES)
def test_the_edge_answers_the_ecs_subnets_line_with_its_datas_scope(
    asn_db: str, address: str, source: int, records: list[str], scope: int
) -> None:
    r = lined_responder(asn_db, decide(LINED, EVERYONE), topology=[("198.51.100.0/24", "edge-lab")])
    assert ecs_ask(r, address, source) == (records, scope)


def test_without_ecs_the_resolvers_own_address_decides_on_the_fast_path(asn_db: str) -> None:
    r = lined_responder(asn_db, decide(LINED, EVERYONE))
    assert plain_ask(r, CN_IP) == ["192.0.2.1"]
    assert plain_ask(r, GB_IP, edns=True) == ["192.0.2.2"]
    assert plain_ask(r, "8.8.8.200") == ["192.0.2.3"]
    assert plain_ask(r, "127.0.0.1") == ["192.0.2.3"]
    assert plain_ask(r, CN_IP, "AAAA") == []  # other types: NODATA for everyone
    assert r._counts.fast  # those went through the dict, not the parser


def test_a_clients_line_with_nothing_up_falls_to_its_next_line_then_default(asn_db: str) -> None:
    r = lined_responder(asn_db, decide(LINED, EVERYONE - {"cn1", "eu1", "us1"}))
    assert ecs_ask(r, "1.2.4.0", 24)[0] == ["192.0.2.1"]  # CN: CN-DC and US-DC down -> fail open (first pool)
    r = lined_responder(asn_db, decide(LINED, EVERYONE - {"cn1"}))
    assert ecs_ask(r, "1.2.4.0", 24)[0] == ["192.0.2.3"]  # CN-DC down: US-DC is on country:CN as well
    r = lined_responder(asn_db, decide(LINED, EVERYONE - {"isp1"}))
    assert ecs_ask(r, "8.8.8.0", 25)[0] == ["192.0.2.3"]  # the ISP's pool down: its country (US) -> default


def test_address_lines_pick_the_clients_records_inside_a_pool(asn_db: str) -> None:
    pool = mkpool(
        "MIX",
        mkaddr("cn", "192.0.2.11", lines=["country:CN"]),
        mkaddr("eu", "192.0.2.12", lines=["continent:EU"]),
        mkaddr("w1", "192.0.2.13"),
        mkaddr("w2", "192.0.2.14"),
    )
    views = views_of({"MIX": pool}, {"cn", "eu", "w1", "w2"})
    domain = Domain(record_type="A", enabled=True, pools=[PoolRef(pool="MIX")])
    r = lined_responder(asn_db, decide_domain(NAME, domain, revision=1, views=views, previous=None))
    assert ecs_ask(r, "1.2.4.0", 24) == (["192.0.2.11"], 22)
    assert ecs_ask(r, "81.2.69.0", 24) == (["192.0.2.12"], 18)
    assert ecs_ask(r, "8.8.8.0", 24)[0] == ["192.0.2.13", "192.0.2.14"]
    views = views_of({"MIX": pool}, {"eu", "w1", "w2"})
    r = lined_responder(asn_db, decide_domain(NAME, domain, revision=1, views=views, previous=None))
    assert ecs_ask(r, "1.2.4.0", 24)[0] == ["192.0.2.13", "192.0.2.14"]  # CN's address down: default's


def test_a_domain_name_pool_of_an_a_domain_answers_cname_for_every_type(asn_db: str) -> None:
    domain = Domain(record_type="A", enabled=True,
                    pools=[PoolRef(pool="US-DC", sequence=1), PoolRef(pool="CDN", sequence=2)])
    r = lined_responder(asn_db, decide(domain, EVERYONE - {"us1"}))
    for qtype in ("A", "AAAA", "HTTPS"):
        q = dns.message.make_query(NAME, qtype)
        msg = dns.message.from_wire(r.answer(q.to_wire(), False, ("127.0.0.1", 1)) or b"")
        assert [(rrset.rdtype, [rd.to_text() for rd in rrset]) for rrset in msg.answer] == [
            (dns.rdatatype.CNAME, ["cdn.example.net."])
        ], qtype
    r = lined_responder(asn_db, decide(domain, EVERYONE))
    q = dns.message.make_query(NAME, "AAAA")
    assert dns.message.from_wire(r.answer(q.to_wire(), False, ("127.0.0.1", 1)) or b"").answer == []


def test_fail_closed_answers_an_empty_noerror(asn_db: str) -> None:
    domain = Domain(record_type="A", enabled=True, all_down="fail_closed", pools=[PoolRef(pool="US-DC")])
    r = lined_responder(asn_db, decide(domain, set()))
    msg = dns.message.from_wire(r.answer(dns.message.make_query(NAME, "A").to_wire(), False, None) or b"")
    assert msg.rcode() == 0 and msg.answer == []


def test_a_lines_move_is_a_switch_event_naming_the_line() -> None:
    from services.scheduler.switch import detect_line_switches

    views = views_of(POOLS, EVERYONE)
    before = decide(LINED, EVERYONE)
    after = decide(LINED, EVERYONE - {"cn1", "isp1"})
    down = views_of(POOLS, EVERYONE - {"cn1", "isp1"})
    events = {e.line: e for e in detect_line_switches(LINED, before, after, views=down, at=1.0)}
    assert set(events) == {"country:CN", "asn:64500"}
    assert (events["country:CN"].from_pool, events["country:CN"].to_pool) == ("CN-DC", "US-DC")
    assert events["country:CN"].reason.startswith("CN-DC unavailable")
    assert events["asn:64500"].to_pool == "(next line)" and "next line" in events["asn:64500"].reason
    back = {e.line: e for e in detect_line_switches(LINED, after, before, views=views, at=2.0)}
    assert back["country:CN"].reason == "CN-DC available again"
    assert back["asn:64500"].reason == "ISP-DC available again"
