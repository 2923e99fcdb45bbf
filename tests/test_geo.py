"""shared.geo: the tables, the built-in geoip2fast data, and MaxMind .mmdb files written here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

from shared import geo
from shared.geo import (
    CONTINENTS,
    COUNTRIES,
    GeoDatabase,
    GeoError,
    Location,
    continent_of,
    open_database,
)

ROOT = Path(__file__).resolve().parent.parent


def test_continents() -> None:
    assert list(CONTINENTS) == ["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
    assert CONTINENTS["NA"] == "North America" and CONTINENTS["AN"] == "Antarctica"


def test_countries() -> None:
    expected = {
        "CN": "AS", "US": "NA", "DE": "EU", "GB": "EU", "JP": "AS", "BR": "SA", "AU": "OC", "ZA": "AF", "AQ": "AN",
        # MaxMind's choices where geography is arguable
        "RU": "EU", "TR": "AS", "CY": "EU", "EG": "AF", "TL": "OC", "GS": "AN", "TF": "AN", "HM": "AN", "BV": "AN",
        "XK": "EU",
    }  # fmt: skip
    assert {code: COUNTRIES[code][1] for code in expected} == expected
    assert len(COUNTRIES) == 250  # the 249 ISO 3166-1 alpha-2 codes and XK
    assert list(COUNTRIES) == sorted(COUNTRIES)
    for code, (name, continent) in COUNTRIES.items():
        assert len(code) == 2 and code.isascii() and code.isalpha() and code.isupper(), code
        assert name and continent in CONTINENTS, code
    assert COUNTRIES["GB"][0] == "United Kingdom"
    assert continent_of("FR") == "EU" and continent_of("") == continent_of("ZZ") == continent_of("fr") == ""


# ---- built-in data --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin() -> GeoDatabase:
    return open_database()


@pytest.mark.parametrize(
    ("address", "country", "continent"),
    [
        ("1.2.4.8", "CN", "AS"),
        ("114.114.114.114", "CN", "AS"),
        ("8.8.8.8", "US", "NA"),
        ("81.2.69.142", "GB", "EU"),
        ("2001:da8::1", "CN", "AS"),  # CERNET
        ("2003::1", "DE", "EU"),  # Deutsche Telekom
        ("::ffff:8.8.8.8", "US", "NA"),  # IPv4-mapped: located as 8.8.8.8 (geoip2fast itself says "broadcast")
    ],
)
def test_builtin_locates(builtin: GeoDatabase, address: str, country: str, continent: str) -> None:
    location = builtin.locate(address)
    assert (location.country, location.continent) == (country, continent)
    bits = 32 if "." in address else 128
    assert 0 < location.country_prefix <= bits
    assert (location.asn, location.isp, location.asn_prefix) == (0, "", 0)


def test_builtin_prefixes(builtin: GeoDatabase) -> None:
    assert builtin.locate("1.2.4.8").country_prefix == 22  # 1.2.4.0/22 in the 2024-06-18 data
    assert builtin.locate("::ffff:1.2.4.8") == builtin.locate("1.2.4.8")
    assert builtin.locate("2001:da8::1").country_prefix == 31  # an IPv6 prefix: 2001:da8::/31
    assert builtin.locate("2003::1").country_prefix == 25


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1", "127.0.0.1", "::1", "::", "0.0.0.0", "192.168.1.1", "100.64.0.1", "192.0.2.1", "224.0.0.1",
        "240.0.0.1", "255.255.255.255", "fe80::1", "fe80::1%eth0", "fc00::1", "2001:db8::1", "ff02::1",
        "::8.8.8.8",  # deprecated IPv4-compatible: geoip2fast would answer for 8.8.8.8
    ],
)  # fmt: skip
def test_builtin_nowhere(builtin: GeoDatabase, address: str) -> None:
    assert builtin.locate(address) == Location()


@pytest.mark.parametrize("address", ["not-an-ip", "", " 8.8.8.8", "8.8.8", "1.2.3.4/32", "010.1.1.1", "::g", 134744072])
def test_not_an_address(builtin: GeoDatabase, address: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address"):
        builtin.locate(address)


def test_builtin_source(builtin: GeoDatabase) -> None:
    assert builtin.source.startswith("geoip2fast 1.2.2 (MAXMIND:GeoLite2-Country")
    assert builtin.asn_source == ""
    assert open_database() is builtin and open_database("", "").source == builtin.source
    assert geo._builtin_engine.cache_info().currsize == 1  # one geoip2fast instance, whatever the arguments


def test_builtin_continent_only(builtin: GeoDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    """geoip2fast's codes that are not countries: a continent at most, never a country or a prefix."""

    class Result:
        def __init__(self, code: str, cidr: str = "1.0.0.0/24", private: bool = False) -> None:
            self.country_code, self.cidr, self.is_private = code, cidr, private

    _, source = geo._builtin_engine()
    answers = {
        "1.0.0.1": Result("EU"), "1.0.0.2": Result("ASIA"), "1.0.0.3": Result("--"), "1.0.0.4": Result(""),
        "1.0.0.5": Result("US", private=True), "1.0.0.6": Result("US", cidr=""), "1.0.0.7": Result("US", "x/33"),
    }  # fmt: skip

    class Fake:
        def lookup(self, ip: str) -> Result:
            return answers[ip]

    monkeypatch.setattr(geo, "_builtin_engine", lambda: (Fake(), source))
    db = GeoDatabase(*geo._open_builtin())
    assert db.locate("1.0.0.1") == Location(continent="EU")
    assert db.locate("1.0.0.2") == Location(continent="AS")
    for address in ("1.0.0.3", "1.0.0.4", "1.0.0.5", "1.0.0.6", "1.0.0.7"):
        assert db.locate(address) == Location(), address


def test_builtin_loads_quietly_and_leaves_the_environment() -> None:
    """Nothing on stdout or stderr, and geoip2fast's os.environ writes (inherited by children) undone."""
    code = (
        "import os, shared.geo as g; db = g.open_database(); db.locate('8.8.8.8');"
        "import sys; sys.stderr.write(repr(('PYTHONWARNINGS' in os.environ, 'PYTHONIOENCODING' in os.environ)))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONIOENCODING")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (out.stdout, out.stderr) == ("", "(False, False)")


# ---- MaxMind DB files -----------------------------------------------------------------------------------------


def _write(path: Path, database_type: str, networks: list[tuple[str, Any]]) -> str:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type, description="gtm test")
    for network, record in networks:
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture(scope="module")
def mmdb_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("mmdb")
    country = _write(
        tmp / "GeoLite2-Country.mmdb",
        "GeoLite2-Country",
        [
            ("198.51.100.0/24", {"continent": {"code": "EU"}, "country": {"iso_code": "DE"}}),
            ("2001:db8::/32", {"continent": {"code": "AS"}, "country": {"iso_code": "JP"}}),
            # no country: the registered one, and its continent from COUNTRIES
            ("203.0.113.0/24", {"registered_country": {"iso_code": "fr"}}),
            ("192.0.2.0/24", {"continent": {"code": "EU"}}),  # a continent only (MaxMind's "Europe" networks)
            ("192.0.2.0/25", {"country": {"iso_code": "E1"}}),  # not a country code
            ("233.252.0.0/24", ["not", "a", "map"]),
        ],
    )
    asn = _write(
        tmp / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        [
            ("198.51.100.0/25", {"autonomous_system_number": 64500, "autonomous_system_organization": "Example Net"}),
            ("2001:db8:1::/48", {"autonomous_system_number": 64501}),
            ("203.0.113.0/24", {"autonomous_system_number": 0, "autonomous_system_organization": "nobody"}),
        ],
    )
    return country, asn


def test_mmdb_country(mmdb_files: tuple[str, str]) -> None:
    db = open_database(mmdb_files[0])
    assert db.source.startswith(f"mmdb {mmdb_files[0]} (GeoLite2-Country, built ") and db.asn_source == ""
    assert db.locate("198.51.100.7") == Location("DE", "EU", 24)
    assert db.locate("::ffff:198.51.100.7") == Location("DE", "EU", 24)
    assert db.locate("2001:db8::1") == Location("JP", "AS", 32)
    assert db.locate("2001:db8:ffff::1") == Location("JP", "AS", 32)
    assert db.locate("203.0.113.9") == Location("FR", "EU", 24)
    assert db.locate("192.0.2.200") == Location(continent="EU")
    assert db.locate("192.0.2.1") == Location()
    for outside in ("198.51.101.1", "8.8.8.8", "2001:db9::1", "::1", "::198.51.100.7", "233.252.0.1"):
        assert db.locate(outside) == Location(), outside
    with pytest.raises(ValueError, match="is not an IP address"):
        db.locate("not-an-ip")


def test_mmdb_asn(mmdb_files: tuple[str, str]) -> None:
    country, asn = mmdb_files
    db = open_database(country, asn)
    assert db.asn_source.startswith(f"mmdb {asn} (GeoLite2-ASN, built ")
    assert db.locate("198.51.100.7") == Location("DE", "EU", 24, 64500, "Example Net", 25)
    assert db.locate("198.51.100.200") == Location("DE", "EU", 24)  # outside the ASN's /25
    assert db.locate("2001:db8:1::1") == Location("JP", "AS", 32, 64501, "", 48)
    assert db.locate("203.0.113.1") == Location("FR", "EU", 24)  # AS 0 is no AS
    assert db.locate("10.0.0.1") == Location()
    assert open_database(country, asn) is db


def test_builtin_with_asn(mmdb_files: tuple[str, str], builtin: GeoDatabase) -> None:
    db = open_database("", mmdb_files[1])
    assert db.source == builtin.source
    assert db.locate("198.51.100.1") == Location(asn=64500, isp="Example Net", asn_prefix=25)  # TEST-NET-2: no country
    assert db.locate("8.8.8.8")[:3] == builtin.locate("8.8.8.8")[:3]


def test_ipv4_only_mmdb(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-Country")
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "NL"}})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    db = open_database(str(tmp_path / "v4.mmdb"))
    assert db.locate("198.51.100.1") == Location("NL", "EU", 24)
    assert db.locate("2001:db8::1") == Location()  # maxminddb raises ValueError for IPv6 in an IPv4 database


def test_missing_and_bad_files(tmp_path: Path, mmdb_files: tuple[str, str]) -> None:
    missing = str(tmp_path / "nope.mmdb")
    with pytest.raises(GeoError, match=f"{missing}.*GTM_GEOIP_DB"):
        open_database(missing)
    with pytest.raises(GeoError, match=f"{missing}.*GTM_GEOIP_ASN_DB"):
        open_database("", missing)
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(GeoError, match=f"{junk}.*GTM_GEOIP_DB"):
        open_database(str(junk))
    with pytest.raises(GeoError, match="GTM_GEOIP_DB"):
        open_database(str(tmp_path))  # a directory
    country, asn = mmdb_files
    with pytest.raises(GeoError, match=f"{asn} \\(GTM_GEOIP_DB\\) is of type 'GeoLite2-ASN'"):
        open_database(asn)  # the two variables swapped
    with pytest.raises(GeoError, match=f"{country} \\(GTM_GEOIP_ASN_DB\\) is of type 'GeoLite2-Country'"):
        open_database("", country)
