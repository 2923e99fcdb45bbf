"""``gtmctl`` commands: apply, get, status, events, explain.

Exit codes follow terraform's: 0 success, 1 any error (usage errors too), and with
``apply --detailed-exitcode`` 2 when the document differs from the live config (``--dry-run``:
changes pending; without it: changes applied), 0 when it matched already.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import ipaddress
import json
import os
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from services.gtmctl.client import Client, GtmctlError, RequestFailed
from shared import manifest

DISTRIBUTION = "gtm"  # the [project] name in pyproject.toml
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

# what `gtmctl get` takes (a resource word, its URL segment, its list key) -> the document key
ALIASES = {
    alias: key
    for key, kind in manifest.KINDS.items()
    for alias in (kind.resource.replace("_", "-"), kind.collection, kind.list_key.replace("_", "-"))
    if alias
}
_SYMBOLS = {"create": "+", "update": "~", "delete": "-"}


def version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _path(key: str, name: str) -> str:
    """The API path of a resource (a singleton's has no name)."""
    kind = manifest.KINDS[key]
    return f"/{kind.collection}" if kind.singleton else f"/{kind.collection}/{name}"


# -- apply -------------------------------------------------------------------------------


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    """Make the API match the document (``POST /apply``: checked whole by the server, all-or-nothing)."""
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    request = {"document": manifest.parse(text), "prune": args.prune, "dry_run": args.dry_run}
    try:
        reply = client.call("POST", "/apply", request)
    except RequestFailed as exc:
        return _refused(exc)
    changes: list[dict[str, Any]] = reply["changes"]
    for ch in changes:
        print(f"{_SYMBOLS.get(ch['action'], '?')} {ch['action']} {_label(ch)}")
        for line in (ch.get("diff") or "").splitlines():
            print("    " + line)
    resets = sum(len(ch.get("resets") or []) for ch in changes)
    if resets:
        fields, done = ("1 field", "was") if resets == 1 else (f"{resets} fields", "were")
        print(f"warning: {fields} changed outside the document {'would be' if args.dry_run else done} reset to "
              "the default (lines marked !); write the value into the document to keep it", file=sys.stderr)
    print(_summary(len(changes), dry_run=args.dry_run))
    return EXIT_CHANGES if args.detailed_exitcode and changes else EXIT_OK


def _label(change: dict[str, Any]) -> str:
    return f"{change['kind'].rstrip('s')} {change['name']}".strip()


def _summary(n: int, *, dry_run: bool) -> str:
    if n == 0:
        return "no changes"
    what = "1 change" if n == 1 else f"{n} changes"
    return f"{what} pending (dry run: nothing written)" if dry_run else f"{what} applied"


def _refused(exc: RequestFailed) -> int:
    """Print why the document was refused and what, if anything, was written."""
    print(f"error: {exc}", file=sys.stderr)
    applied = exc.body.get("applied") if isinstance(exc.body, dict) else None
    if applied:
        print("written before the failure:", file=sys.stderr)
        for ch in applied:
            print(f"  {_SYMBOLS.get(ch['action'], '?')} {ch['action']} {_label(ch)}", file=sys.stderr)
    elif exc.status < 500 or exc.code == "unavailable":
        print("nothing was written", file=sys.stderr)
    return EXIT_ERROR


# -- get ---------------------------------------------------------------------------------

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], Any]]


def _seconds(key: str) -> Callable[[Row], Any]:
    return lambda r: f"{r[key]:g}s" if isinstance(r.get(key), int | float) else r.get(key)


def _key(key: str) -> Callable[[Row], Any]:
    return lambda r: r.get(key)


def _domain_pools(r: Row) -> str:
    return ",".join(p["pool"] for p in sorted(r.get("pools", []), key=lambda p: p.get("sequence", 1)))


def _domain_strategy(r: Row) -> str:
    mode = f"/{r.get('sequence_mode')}" if r.get("lb_strategy") == "sequence" else ""
    return f"{r.get('lb_strategy')}{mode}"


COLUMNS: dict[str, list[Column]] = {
    "health_templates": [("NAME", _key("name")), ("PROTOCOL", _key("protocol")), ("PORT", _key("port")),
                         ("PATH", _key("path")), ("INTERVAL", _seconds("interval_s")),
                         ("TIMEOUT", _seconds("timeout_s")), ("REVISION", _key("revision"))],
    "pools": [("NAME", _key("name")), ("TYPE", _key("type")), ("ENABLED", _key("enabled")),
              ("STRATEGY", _key("lb_strategy")), ("CONDITION", _key("health_condition")),
              ("ADDRESSES", lambda r: len(r.get("addresses", []))), ("REVISION", _key("revision"))],
    "domains": [("NAME", _key("name")), ("TYPE", _key("record_type")), ("TTL", _seconds("ttl")),
                ("ENABLED", _key("enabled")), ("STRATEGY", _domain_strategy), ("POOLS", _domain_pools),
                ("REVISION", _key("revision"))],
    "alert_targets": [("NAME", _key("name")), ("TYPE", lambda r: r.get("type", "webhook")),
                      ("URL", _key("url")), ("ENABLED", _key("enabled")), ("KINDS", _key("kinds")),
                      ("REVISION", _key("revision"))],
    "topology": [("CIDR", _key("cidr")), ("REGION", _key("region"))],
}
_DEFAULT_COLUMNS: list[Column] = [("NAME", _key("name")), ("REVISION", _key("revision"))]


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    """Print one resource or a list: a table, or the API's JSON as JSON or YAML."""
    key = ALIASES.get(args.kind)
    if key is None:
        raise GtmctlError(f"unknown kind {args.kind!r}: one of {', '.join(sorted(ALIASES))}")
    kind = manifest.KINDS[key]
    body = client.call("GET", _path(key, args.name) if args.name else f"/{kind.collection}")
    output = args.output or ("table" if sys.stdout.isatty() else "json")  # a pipe gets what scripts parse
    if output == "json":
        print(json.dumps(body, indent=2))
    elif output == "yaml":
        import yaml

        print(yaml.safe_dump(body, sort_keys=False, allow_unicode=True), end="")
    else:
        rows = body.get("entries", []) if kind.singleton else body[kind.list_key] if not args.name else [body]
        print(table(COLUMNS.get(key, _DEFAULT_COLUMNS), rows))
    return EXIT_OK


def table(columns: list[Column], rows: list[Row]) -> str:
    """Rows as an aligned text table with a header line."""
    cells = [[h for h, _ in columns], *([_cell(get(r)) for _, get in columns] for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


# -- status, events, explain -----------------------------------------------------------------


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    """Print a domain's answer and the health of its pools and addresses (TTL in s, RTT in ms)."""
    st = client.call("GET", f"/domains/{args.domain}/status")
    ans = st.get("answer") or {}
    print(f"{st['domain']}  {st.get('status', 'enabled' if st['enabled'] else 'disabled')}")
    if ans:
        fb = "  (fallback: no pool available)" if ans.get("fallback") else ""
        print(f"answer: {ans.get('pool')} -> {', '.join(ans.get('records', []))}  ttl {ans.get('ttl')} s{fb}")
    for pool in st.get("pools", []):
        print(f"  {pool['name']:<24} {_state(pool.get('available'))}")
        for a in pool.get("addresses", []):
            checks = "; ".join(check_line(c) for c in a.get("checks", []))
            print(f"    {a['name']:<22} {a['address']:<18} {_state(a.get('available'))}  {checks}".rstrip())
    return EXIT_OK


def check_line(check: dict[str, Any]) -> str:
    """One probe result in words: ``eu: ok 1.4 ms``, ``eu: connection refused``."""
    rtt = check.get("rtt_ms")
    took = f" {rtt:.1f} ms" if isinstance(rtt, int | float) and (check.get("ok") or rtt) else ""
    return f"{check.get('region')}: {'ok' if check.get('ok') else check.get('error') or 'failed'}{took}"


def _state(available: bool | None) -> str:
    return {True: "available", False: "UNAVAILABLE", None: "unknown"}[available]


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    """Print the switch and operation log, newest first."""
    q = [f"limit={args.limit}"] + [f"{k}={v}" for k, v in (("domain", args.domain), ("kind", args.kind)) if v]
    for ev in client.call("GET", "/events?" + "&".join(q))["events"]:
        print(f"{ev['at']}  {ev['kind']:<9} {ev.get('domain') or '-':<24} {ev['message']}")
    return EXIT_OK


def cmd_health_logs(client: Client, args: argparse.Namespace) -> int:
    """Print an address's (or pool's, or every) health log, newest first."""
    params = {k: v for k, v in (("pool", args.pool), ("address", args.address), ("region", args.region),
                                ("since", args.since), ("limit", str(args.limit))) if v}
    body = client.call("GET", "/health-logs?" + urllib.parse.urlencode(params))
    for e in body["logs"]:
        where = f"{e['pool']}/{e['address']}"
        if e["kind"] == "address_changed":
            detail = e["message"]
        else:
            seen = f"{e['region']} {e['prober']}".strip()
            rtt = f" rtt {e['rtt_ms']:.1f} ms" if e.get("rtt_ms") is not None else ""
            loss = f" loss {e['loss_pct']:.0f}%" if e.get("loss_pct") is not None else ""
            detail = f"{e['protocol']}#{e['check']} {seen}: {e['message'] or e['error'] or 'ok'}{rtt}{loss}"
        print(f"{e['at']}  {e['kind']:<15} {where:<28} {detail}")
    if body.get("truncated"):
        print("(more entries than one query reads: narrow it with --since)", file=sys.stderr)
    return EXIT_OK


def cmd_explain(client: Client, args: argparse.Namespace) -> int:
    """Say which pool and addresses a domain answers, and why."""
    dom = client.call("GET", f"/domains/{args.domain}")
    st = client.call("GET", f"/domains/{args.domain}/status")
    pools = {p["name"]: p for p in st.get("pools", [])}
    print(f"{dom['name']}  {dom['record_type']}  ttl {dom['ttl']} s  "
          f"{'enabled' if dom['enabled'] else 'disabled (edges answer REFUSED)'}")
    print(f"strategy between pools: {dom['lb_strategy']}"
          + (f" ({dom['sequence_mode']})" if dom["lb_strategy"] == "sequence" else ""))
    for ref in sorted(dom["pools"], key=lambda r: r["sequence"]):
        p = pools.get(ref["pool"], {})
        ok = [a["name"] for a in p.get("addresses", []) if a.get("available")]
        lines = ref.get("lines", ["default"])
        print(f"  #{ref['sequence']} {ref['pool']:<22} weight {ref['weight']:<3} {_state(p.get('available'))}"
              f"  available addresses: {', '.join(ok) or 'none'}"
              + ("" if lines == ["default"] else f"  lines: {', '.join(lines)}"))
    ans = st.get("answer")
    if ans:
        why = _all_down_text(dom) if ans["fallback"] else (
            f"{ans['pool']} is the pool the {dom['lb_strategy']} strategy picks among the available ones")
        print(f"answer: {', '.join(ans['records']) or '(no records)'} from {ans['pool'] or '-'}: {why}")
    else:
        print("answer: none published yet (warming up or disabled)")
    if args.client_subnet:
        return _explain_client(client, args.client_subnet, dom, st)
    return EXIT_OK


def _all_down_text(dom: dict[str, Any]) -> str:
    """What the domain does with no pool available, in words."""
    policy = dom.get("all_down") or "fail_open"
    if policy == "fail_closed":
        return "no pool is available, so it answers no records (all_down fail_closed)"
    if policy == "fallback_pool":
        return f"no pool is available, so it answers its fallback pool {dom.get('fallback_pool')}"
    return "no pool is available, so it fails open to the first enabled pool"


def _explain_client(client: Client, subnet: str, dom: dict[str, Any], st: dict[str, Any]) -> int:
    """Which request-source line a client subnet matches for the domain, the pools of it, and why."""
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise GtmctlError(f"{subnet!r} is not a subnet") from None
    found = client.call("GET", "/lines/lookup?" + urllib.parse.urlencode({"address": str(net)}))
    where = [
        f"region {found['region']} via {found['region_cidr']}" if found.get("region") else "",
        f"AS{found['asn']}" + (f" {found['isp']}" if found.get("isp") else "") if found.get("asn") else "",
        f"country {found['country']} {found.get('country_name') or ''}".rstrip() if found.get("country") else "",
        f"continent {found['continent']}" if found.get("continent") else "",
    ]
    print(f"client {net}: {', '.join(w for w in where if w) or 'nowhere known (private or unlisted)'}")
    print(f"  matches, most specific first: {', '.join(found['lines'])}")
    present = {line for ref in dom["pools"] for line in ref.get("lines", ["default"])}
    answer = st.get("answer") or {}
    answered = {a["line"]: a for a in answer.get("lines", [])}
    for line in found["lines"]:
        if line not in present:
            continue
        if line in answered:
            a = answered[line]
            print(f"  line {line}: answered by {a['pool']} -> {', '.join(a['records']) or '(no records)'}")
            return EXIT_OK
        if line == "default":
            break
        print(f"  line {line}: on this domain, but none of its pools is available; trying the next line")
    why = "the default line" if "default" in present else "no line of the domain matches"
    if answer.get("fallback"):
        why += ", with no pool available: the all-down policy"
    records = ", ".join(answer.get("records", [])) or "(no records)"
    print(f"  {why}: answered by {answer.get('pool') or '-'} -> {records}")
    if dom["lb_strategy"] == "source_nearest":
        print("  source_nearest answers the available pool of the client's region, else the first available pool")
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1: 2 means "changes" to ``apply --detailed-exitcode``."""

    def error(self, message: str) -> NoReturn:
        """Print the usage and the error; exit 1."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = _Parser(prog="gtmctl", description="Manage a GTM through its REST API.")
    p.add_argument("--version", action="version", version=f"gtmctl {version()}")
    p.add_argument("--api", default=os.environ.get("GTM_API_URL", "http://127.0.0.1:8080"),
                   help="API base URL (env GTM_API_URL)")
    p.add_argument("--token", default=os.environ.get("GTM_API_TOKEN", ""), help="Bearer token (env GTM_API_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("apply", help="make the API match a YAML/JSON document (all-or-nothing)")
    a.add_argument("-f", "--file", required=True, help="document path, or - for stdin")
    a.add_argument("--prune", action="store_true", help="delete resources the document does not list")
    a.add_argument("--dry-run", action="store_true",
                   help="have the server check the document and show the changes and their diff; write nothing")
    a.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 2 when there are changes (pending with --dry-run, else applied), 0 when none, 1 on error")
    a.set_defaults(func=cmd_apply)
    g = sub.add_parser("get", help="print resources")
    g.add_argument("kind", help="pools, domains, templates, alert-targets, topology")
    g.add_argument("name", nargs="?")
    g.add_argument("-o", "--output", choices=["table", "json", "yaml"], default=None,
                   help="table, or the API's JSON as json or yaml (default: table on a terminal, else json)")
    g.set_defaults(func=cmd_get)
    s = sub.add_parser("status", help="a domain's answer and health")
    s.add_argument("domain")
    s.set_defaults(func=cmd_status)
    e = sub.add_parser("events", help="switch and operation log")
    e.add_argument("--domain")
    e.add_argument("--kind", choices=["switch", "operation"])
    e.add_argument("--limit", type=int, default=20)
    e.set_defaults(func=cmd_events)
    h = sub.add_parser("health-logs", help="failed checks and health changes of addresses, newest first")
    h.add_argument("--pool")
    h.add_argument("--address", help="an address of --pool")
    h.add_argument("--region", help="only what this prober region saw")
    h.add_argument("--since", help="RFC 3339 time (default: one day back)")
    h.add_argument("--limit", type=int, default=50)
    h.set_defaults(func=cmd_health_logs)
    x = sub.add_parser("explain", help="which pool and addresses a domain answers, and why")
    x.add_argument("domain")
    x.add_argument("--client-subnet", help="explain for a client in this subnet: its line, region and answer")
    x.set_defaults(func=cmd_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one gtmctl command; return the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (1)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR if exc.code else EXIT_OK
    try:
        return int(args.func(Client(args.api, args.token), args))
    except BrokenPipeError:  # `gtmctl get pools -o json | head`: the reader left, nothing to report
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_ERROR
    except (GtmctlError, manifest.ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
