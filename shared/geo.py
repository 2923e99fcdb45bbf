"""Where an IP address is: country, continent and autonomous system, from offline data.

:func:`open_database` gives a :class:`GeoDatabase` whose :meth:`~GeoDatabase.locate` maps an IPv4 or IPv6
address to a :class:`Location`.  Countries come from the data that ships with the ``geoip2fast`` package (MaxMind
GeoLite2 Country, IPv4 and IPv6) unless a MaxMind GeoIP2/GeoLite2 Country or City ``.mmdb`` file is configured
(``GTM_GEOIP_DB``); autonomous systems come only from a GeoLite2-ASN ``.mmdb`` file (``GTM_GEOIP_ASN_DB``).
Private, loopback, reserved and unknown addresses give the empty ``Location()``.

:data:`COUNTRIES` names every ISO 3166-1 alpha-2 code (and ``XK``, Kosovo, which GeoIP databases use) with the
continent MaxMind assigns it (Russia Europe, Türkiye Asia, Cyprus Europe, Timor-Leste Oceania, the Antarctic
territories Antarctica); :data:`CONTINENTS` names the seven continent codes.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import maxminddb
import maxminddb.errors

CONTINENTS: dict[str, str] = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}

# code -> (English short name, continent), as MaxMind's GeoLite2-Country-Locations-en.csv has them
COUNTRIES: dict[str, tuple[str, str]] = {
    "AD": ("Andorra", "EU"),
    "AE": ("United Arab Emirates", "AS"),
    "AF": ("Afghanistan", "AS"),
    "AG": ("Antigua and Barbuda", "NA"),
    "AI": ("Anguilla", "NA"),
    "AL": ("Albania", "EU"),
    "AM": ("Armenia", "AS"),
    "AO": ("Angola", "AF"),
    "AQ": ("Antarctica", "AN"),
    "AR": ("Argentina", "SA"),
    "AS": ("American Samoa", "OC"),
    "AT": ("Austria", "EU"),
    "AU": ("Australia", "OC"),
    "AW": ("Aruba", "NA"),
    "AX": ("Åland Islands", "EU"),
    "AZ": ("Azerbaijan", "AS"),
    "BA": ("Bosnia and Herzegovina", "EU"),
    "BB": ("Barbados", "NA"),
    "BD": ("Bangladesh", "AS"),
    "BE": ("Belgium", "EU"),
    "BF": ("Burkina Faso", "AF"),
    "BG": ("Bulgaria", "EU"),
    "BH": ("Bahrain", "AS"),
    "BI": ("Burundi", "AF"),
    "BJ": ("Benin", "AF"),
    "BL": ("Saint Barthélemy", "NA"),
    "BM": ("Bermuda", "NA"),
    "BN": ("Brunei", "AS"),
    "BO": ("Bolivia", "SA"),
    "BQ": ("Bonaire, Sint Eustatius and Saba", "NA"),
    "BR": ("Brazil", "SA"),
    "BS": ("Bahamas", "NA"),
    "BT": ("Bhutan", "AS"),
    "BV": ("Bouvet Island", "AN"),
    "BW": ("Botswana", "AF"),
    "BY": ("Belarus", "EU"),
    "BZ": ("Belize", "NA"),
    "CA": ("Canada", "NA"),
    "CC": ("Cocos (Keeling) Islands", "AS"),
    "CD": ("Congo (DRC)", "AF"),
    "CF": ("Central African Republic", "AF"),
    "CG": ("Congo Republic", "AF"),
    "CH": ("Switzerland", "EU"),
    "CI": ("Ivory Coast", "AF"),
    "CK": ("Cook Islands", "OC"),
    "CL": ("Chile", "SA"),
    "CM": ("Cameroon", "AF"),
    "CN": ("China", "AS"),
    "CO": ("Colombia", "SA"),
    "CR": ("Costa Rica", "NA"),
    "CU": ("Cuba", "NA"),
    "CV": ("Cabo Verde", "AF"),
    "CW": ("Curaçao", "NA"),
    "CX": ("Christmas Island", "OC"),
    "CY": ("Cyprus", "EU"),
    "CZ": ("Czechia", "EU"),
    "DE": ("Germany", "EU"),
    "DJ": ("Djibouti", "AF"),
    "DK": ("Denmark", "EU"),
    "DM": ("Dominica", "NA"),
    "DO": ("Dominican Republic", "NA"),
    "DZ": ("Algeria", "AF"),
    "EC": ("Ecuador", "SA"),
    "EE": ("Estonia", "EU"),
    "EG": ("Egypt", "AF"),
    "EH": ("Western Sahara", "AF"),
    "ER": ("Eritrea", "AF"),
    "ES": ("Spain", "EU"),
    "ET": ("Ethiopia", "AF"),
    "FI": ("Finland", "EU"),
    "FJ": ("Fiji", "OC"),
    "FK": ("Falkland Islands", "SA"),
    "FM": ("Federated States of Micronesia", "OC"),
    "FO": ("Faroe Islands", "EU"),
    "FR": ("France", "EU"),
    "GA": ("Gabon", "AF"),
    "GB": ("United Kingdom", "EU"),
    "GD": ("Grenada", "NA"),
    "GE": ("Georgia", "AS"),
    "GF": ("French Guiana", "SA"),
    "GG": ("Guernsey", "EU"),
    "GH": ("Ghana", "AF"),
    "GI": ("Gibraltar", "EU"),
    "GL": ("Greenland", "NA"),
    "GM": ("Gambia", "AF"),
    "GN": ("Guinea", "AF"),
    "GP": ("Guadeloupe", "NA"),
    "GQ": ("Equatorial Guinea", "AF"),
    "GR": ("Greece", "EU"),
    "GS": ("South Georgia and the South Sandwich Islands", "AN"),
    "GT": ("Guatemala", "NA"),
    "GU": ("Guam", "OC"),
    "GW": ("Guinea-Bissau", "AF"),
    "GY": ("Guyana", "SA"),
    "HK": ("Hong Kong", "AS"),
    "HM": ("Heard and McDonald Islands", "AN"),
    "HN": ("Honduras", "NA"),
    "HR": ("Croatia", "EU"),
    "HT": ("Haiti", "NA"),
    "HU": ("Hungary", "EU"),
    "ID": ("Indonesia", "AS"),
    "IE": ("Ireland", "EU"),
    "IL": ("Israel", "AS"),
    "IM": ("Isle of Man", "EU"),
    "IN": ("India", "AS"),
    "IO": ("British Indian Ocean Territory", "AS"),
    "IQ": ("Iraq", "AS"),
    "IR": ("Iran", "AS"),
    "IS": ("Iceland", "EU"),
    "IT": ("Italy", "EU"),
    "JE": ("Jersey", "EU"),
    "JM": ("Jamaica", "NA"),
    "JO": ("Jordan", "AS"),
    "JP": ("Japan", "AS"),
    "KE": ("Kenya", "AF"),
    "KG": ("Kyrgyzstan", "AS"),
    "KH": ("Cambodia", "AS"),
    "KI": ("Kiribati", "OC"),
    "KM": ("Comoros", "AF"),
    "KN": ("Saint Kitts and Nevis", "NA"),
    "KP": ("North Korea", "AS"),
    "KR": ("South Korea", "AS"),
    "KW": ("Kuwait", "AS"),
    "KY": ("Cayman Islands", "NA"),
    "KZ": ("Kazakhstan", "AS"),
    "LA": ("Laos", "AS"),
    "LB": ("Lebanon", "AS"),
    "LC": ("Saint Lucia", "NA"),
    "LI": ("Liechtenstein", "EU"),
    "LK": ("Sri Lanka", "AS"),
    "LR": ("Liberia", "AF"),
    "LS": ("Lesotho", "AF"),
    "LT": ("Lithuania", "EU"),
    "LU": ("Luxembourg", "EU"),
    "LV": ("Latvia", "EU"),
    "LY": ("Libya", "AF"),
    "MA": ("Morocco", "AF"),
    "MC": ("Monaco", "EU"),
    "MD": ("Moldova", "EU"),
    "ME": ("Montenegro", "EU"),
    "MF": ("Saint Martin", "NA"),
    "MG": ("Madagascar", "AF"),
    "MH": ("Marshall Islands", "OC"),
    "MK": ("North Macedonia", "EU"),
    "ML": ("Mali", "AF"),
    "MM": ("Myanmar", "AS"),
    "MN": ("Mongolia", "AS"),
    "MO": ("Macao", "AS"),
    "MP": ("Northern Mariana Islands", "OC"),
    "MQ": ("Martinique", "NA"),
    "MR": ("Mauritania", "AF"),
    "MS": ("Montserrat", "NA"),
    "MT": ("Malta", "EU"),
    "MU": ("Mauritius", "AF"),
    "MV": ("Maldives", "AS"),
    "MW": ("Malawi", "AF"),
    "MX": ("Mexico", "NA"),
    "MY": ("Malaysia", "AS"),
    "MZ": ("Mozambique", "AF"),
    "NA": ("Namibia", "AF"),
    "NC": ("New Caledonia", "OC"),
    "NE": ("Niger", "AF"),
    "NF": ("Norfolk Island", "OC"),
    "NG": ("Nigeria", "AF"),
    "NI": ("Nicaragua", "NA"),
    "NL": ("Netherlands", "EU"),
    "NO": ("Norway", "EU"),
    "NP": ("Nepal", "AS"),
    "NR": ("Nauru", "OC"),
    "NU": ("Niue", "OC"),
    "NZ": ("New Zealand", "OC"),
    "OM": ("Oman", "AS"),
    "PA": ("Panama", "NA"),
    "PE": ("Peru", "SA"),
    "PF": ("French Polynesia", "OC"),
    "PG": ("Papua New Guinea", "OC"),
    "PH": ("Philippines", "AS"),
    "PK": ("Pakistan", "AS"),
    "PL": ("Poland", "EU"),
    "PM": ("Saint Pierre and Miquelon", "NA"),
    "PN": ("Pitcairn Islands", "OC"),
    "PR": ("Puerto Rico", "NA"),
    "PS": ("Palestine", "AS"),
    "PT": ("Portugal", "EU"),
    "PW": ("Palau", "OC"),
    "PY": ("Paraguay", "SA"),
    "QA": ("Qatar", "AS"),
    "RE": ("Réunion", "AF"),
    "RO": ("Romania", "EU"),
    "RS": ("Serbia", "EU"),
    "RU": ("Russia", "EU"),
    "RW": ("Rwanda", "AF"),
    "SA": ("Saudi Arabia", "AS"),
    "SB": ("Solomon Islands", "OC"),
    "SC": ("Seychelles", "AF"),
    "SD": ("Sudan", "AF"),
    "SE": ("Sweden", "EU"),
    "SG": ("Singapore", "AS"),
    "SH": ("St. Helena", "AF"),
    "SI": ("Slovenia", "EU"),
    "SJ": ("Svalbard and Jan Mayen", "EU"),
    "SK": ("Slovakia", "EU"),
    "SL": ("Sierra Leone", "AF"),
    "SM": ("San Marino", "EU"),
    "SN": ("Senegal", "AF"),
    "SO": ("Somalia", "AF"),
    "SR": ("Suriname", "SA"),
    "SS": ("South Sudan", "AF"),
    "ST": ("São Tomé and Príncipe", "AF"),
    "SV": ("El Salvador", "NA"),
    "SX": ("Sint Maarten", "NA"),
    "SY": ("Syria", "AS"),
    "SZ": ("Eswatini", "AF"),
    "TC": ("Turks and Caicos Islands", "NA"),
    "TD": ("Chad", "AF"),
    "TF": ("French Southern Territories", "AN"),
    "TG": ("Togo", "AF"),
    "TH": ("Thailand", "AS"),
    "TJ": ("Tajikistan", "AS"),
    "TK": ("Tokelau", "OC"),
    "TL": ("Timor-Leste", "OC"),
    "TM": ("Turkmenistan", "AS"),
    "TN": ("Tunisia", "AF"),
    "TO": ("Tonga", "OC"),
    "TR": ("Türkiye", "AS"),
    "TT": ("Trinidad and Tobago", "NA"),
    "TV": ("Tuvalu", "OC"),
    "TW": ("Taiwan", "AS"),
    "TZ": ("Tanzania", "AF"),
    "UA": ("Ukraine", "EU"),
    "UG": ("Uganda", "AF"),
    "UM": ("United States Minor Outlying Islands", "OC"),
    "US": ("United States", "NA"),
    "UY": ("Uruguay", "SA"),
    "UZ": ("Uzbekistan", "AS"),
    "VA": ("Vatican City", "EU"),
    "VC": ("Saint Vincent and the Grenadines", "NA"),
    "VE": ("Venezuela", "SA"),
    "VG": ("British Virgin Islands", "NA"),
    "VI": ("U.S. Virgin Islands", "NA"),
    "VN": ("Vietnam", "AS"),
    "VU": ("Vanuatu", "OC"),
    "WF": ("Wallis and Futuna", "OC"),
    "WS": ("Samoa", "OC"),
    "XK": ("Kosovo", "EU"),
    "YE": ("Yemen", "AS"),
    "YT": ("Mayotte", "AF"),
    "ZA": ("South Africa", "AF"),
    "ZM": ("Zambia", "AF"),
    "ZW": ("Zimbabwe", "AF"),
}

COUNTRY_ENV = "GTM_GEOIP_DB"
ASN_ENV = "GTM_GEOIP_ASN_DB"
BUILTIN_DATA_FILE = "geoip2fast-ipv6.dat.gz"  # country only, IPv4 and IPv6; the -asn files have no AS numbers

# geoip2fast codes for networks MaxMind places in a continent but no country
_GEOIP2FAST_CONTINENT_ONLY = {"EU": "EU", "ASIA": "AS"}
_IPV4_BITS = 32


class Location(NamedTuple):
    """Where an address is; the empty ``Location()`` when nothing is known (private, loopback, reserved)."""

    country: str = ""  # ISO 3166-1 alpha-2, upper case
    continent: str = ""  # a CONTINENTS code
    country_prefix: int = 0  # prefix length of the database network that gave the country
    asn: int = 0  # autonomous system number
    isp: str = ""  # the AS organisation's name
    asn_prefix: int = 0  # prefix length of the database network that gave the ASN


EMPTY = Location()


class GeoError(Exception):
    """A configured GeoIP database file cannot be opened or read."""


def continent_of(country: str) -> str:
    """The continent code of an ISO 3166-1 alpha-2 country code; "" when the code is unknown."""
    entry = COUNTRIES.get(country)
    return entry[1] if entry else ""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _CountryLookup(Protocol):
    def __call__(self, ip: IPAddress) -> tuple[str, str, int]: ...  # (country, continent, prefix)


class _AsnLookup(Protocol):
    def __call__(self, ip: IPAddress) -> tuple[int, str, int]: ...  # (asn, organisation, prefix)


class GeoDatabase:
    """Country (and, when configured, ASN) data; made by :func:`open_database`."""

    def __init__(self, country: _CountryLookup, source: str, asn: _AsnLookup | None = None, asn_source: str = ""):
        self._country = country
        self._asn = asn
        self.source = source  # what gives countries, for logs and status pages
        self.asn_source = asn_source if asn is not None else ""  # "" when there are no AS numbers

    def __repr__(self) -> str:
        return f"GeoDatabase(source={self.source!r}, asn_source={self.asn_source!r})"

    def locate(self, address: str) -> Location:
        """Where an IPv4 or IPv6 address (text) is; ``ValueError`` for anything else.

        An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) is located as its IPv4 address; the rest of ``::/96``
        (unspecified, loopback, the deprecated IPv4-compatible form) is reserved and gives ``Location()``.
        """
        ip = _parse(address)
        if ip is None:
            return EMPTY
        country, continent, prefix = self._country(ip)
        if not country:
            prefix = 0
        asn, isp, asn_prefix = self._asn(ip) if self._asn is not None else (0, "", 0)
        return Location(country, continent, prefix, asn, isp, asn_prefix)


def _parse(address: str) -> IPAddress | None:
    """The address to look up, or None for one that no database places (``::/96``)."""
    if not isinstance(address, str):  # ipaddress would take an int
        raise ValueError(f"{address!r} is not an IP address")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return mapped
    if int(ip) >> _IPV4_BITS == 0:
        return None
    return ipaddress.IPv6Address(int(ip)) if ip.scope_id else ip  # a zone (fe80::1%eth0) is no part of where


def _prefix(cidr: str, ip: IPAddress) -> int:
    """The N of ``network/N`` when it is a valid prefix length for ``ip``'s family, else 0."""
    _, slash, bits = cidr.rpartition("/")
    if not slash or not bits.isdigit():
        return 0
    n = int(bits)
    return n if 0 < n <= ip.max_prefixlen else 0


# ---- built-in data: geoip2fast ------------------------------------------------------------------------------------

_builtin_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _builtin_engine() -> tuple[Any, str]:
    """The one geoip2fast instance of this process (it keeps its data in module globals) and its source text."""
    saved = {name: os.environ.get(name) for name in ("PYTHONWARNINGS", "PYTHONIOENCODING")}
    try:
        # geoip2fast sets these two variables at import, and child processes would inherit them
        from geoip2fast import geoip2fast as g2f  # type: ignore[import-untyped]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        engine = g2f.GeoIP2Fast(geoip2fast_data_file=BUILTIN_DATA_FILE, verbose=False)
    except Exception as err:  # noqa: BLE001 - geoip2fast wraps every failure in its GeoIPError
        raise GeoError(f"cannot load the built-in GeoIP data {BUILTIN_DATA_FILE} ({COUNTRY_ENV} unset): {err}") from err
    return engine, f"geoip2fast {g2f.__version__} ({engine.source_info})"


def _open_builtin() -> tuple[_CountryLookup, str]:
    with _builtin_lock:
        engine, source = _builtin_engine()
    lookup = engine.lookup

    def country(ip: IPAddress) -> tuple[str, str, int]:
        result = lookup(str(ip))
        code = result.country_code
        if result.is_private or not isinstance(code, str):
            return "", "", 0
        if code in COUNTRIES:
            prefix = _prefix(result.cidr, ip)
            return (code, COUNTRIES[code][1], prefix) if prefix else ("", "", 0)
        # "--" private/reserved/not found, "" invalid or internal error, "EU"/"ASIA" a continent only
        return "", _GEOIP2FAST_CONTINENT_ONLY.get(code, ""), 0

    return country, source


# ---- MaxMind DB files ---------------------------------------------------------------------------------------------


def _open_mmdb(path: str, env: str, wanted: str) -> maxminddb.Reader:
    """A reader of ``path``; GeoError naming the file and ``env`` when it cannot be opened or is the other kind."""
    try:
        reader = maxminddb.open_database(path)
        kind = str(reader.metadata().database_type)
    except (OSError, ValueError, maxminddb.errors.InvalidDatabaseError) as err:
        raise GeoError(f"cannot open the GeoIP database {path} ({env}): {err}") from err
    is_asn = "ASN" in kind.upper()
    if is_asn != (wanted == "ASN"):
        reader.close()
        want = "an ASN database (GeoLite2-ASN)" if wanted == "ASN" else "a Country or City database"
        raise GeoError(f"the GeoIP database {path} ({env}) is of type {kind!r}; {env} wants {want}")
    return reader


def _mmdb_source(path: str, reader: maxminddb.Reader) -> str:
    meta = reader.metadata()
    built = time.strftime("%Y-%m-%d", time.gmtime(meta.build_epoch))
    return f"mmdb {path} ({meta.database_type}, built {built})"


def _lookup(reader: maxminddb.Reader, ip: IPAddress) -> tuple[Mapping[str, Any], int]:
    """The record (a mapping, else {}) for ``ip`` and its network's prefix length (0 when none)."""
    try:
        record, prefix = reader.get_with_prefix_len(ip)
    except ValueError:  # an IPv6 address in an IPv4-only database
        return {}, 0
    if not isinstance(record, Mapping):
        return {}, 0
    return record, prefix if 0 < prefix <= ip.max_prefixlen else 0


def _field(record: Mapping[str, Any], key: str, sub: str) -> str:
    value = record.get(key)
    item = value.get(sub) if isinstance(value, Mapping) else None
    return item if isinstance(item, str) else ""


def _open_country_mmdb(path: str) -> tuple[_CountryLookup, str]:
    reader = _open_mmdb(path, COUNTRY_ENV, "country")

    def country(ip: IPAddress) -> tuple[str, str, int]:
        record, prefix = _lookup(reader, ip)
        code = (_field(record, "country", "iso_code") or _field(record, "registered_country", "iso_code")).upper()
        if not (len(code) == 2 and code.isascii() and code.isalpha()):
            code = ""
        continent = _field(record, "continent", "code").upper()
        if continent not in CONTINENTS:
            continent = continent_of(code)
        if not prefix:
            code = ""
        return code, continent, prefix if code else 0

    return country, _mmdb_source(path, reader)


def _open_asn_mmdb(path: str) -> tuple[_AsnLookup, str]:
    reader = _open_mmdb(path, ASN_ENV, "ASN")

    def asn(ip: IPAddress) -> tuple[int, str, int]:
        record, prefix = _lookup(reader, ip)
        number = record.get("autonomous_system_number")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 2**32 or not prefix:
            return 0, "", 0
        org = record.get("autonomous_system_organization")
        return number, org if isinstance(org, str) else "", prefix

    return asn, _mmdb_source(path, reader)


@functools.lru_cache(maxsize=8)
def open_database(country_db: str = "", asn_db: str = "") -> GeoDatabase:
    """The database for these files, loaded once per process.

    ``country_db`` "" is the built-in geoip2fast data, else a GeoIP2/GeoLite2 Country or City ``.mmdb`` file
    (``GTM_GEOIP_DB``); ``asn_db`` "" means no AS numbers, else a GeoLite2-ASN ``.mmdb`` file
    (``GTM_GEOIP_ASN_DB``).  A file that cannot be opened or read raises :class:`GeoError` naming it.
    """
    country, source = _open_country_mmdb(country_db) if country_db else _open_builtin()
    if not asn_db:
        return GeoDatabase(country, source)
    asn, asn_source = _open_asn_mmdb(asn_db)
    return GeoDatabase(country, source, asn, asn_source)
