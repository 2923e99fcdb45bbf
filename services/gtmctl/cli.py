"""``gtmctl`` commands: apply, get, status, events, explain."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from typing import Any

from services.gtmctl.client import Client, RequestFailed
from shared import manifest

# what `gtmctl get` takes (a resource word, its URL segment, its list key) -> the document key
ALIASES = {
    alias: key
    for key, kind in manifest.KINDS.items()
    for alias in (kind.resource.replace("_", "-"), kind.collection, kind.list_key.replace("_", "-"))
    if alias
}


def current_state(client: Client, kinds: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every resource of ``kinds`` as the API has it now."""
    state: dict[str, dict[str, dict[str, Any]]] = {}
    for key in kinds:
        kind = manifest.KINDS[key]
        if kind.singleton:
            body = client.call("GET", f"/{kind.collection}")
            state[key] = {"": body} if body and body.get("revision") else {}
        else:
            state[key] = {r["name"]: r for r in client.call("GET", f"/{kind.collection}")[kind.list_key]}
    return state


def _path(key: str, name: str) -> str:
    """The API path of a resource (a singleton's has no name)."""
    kind = manifest.KINDS[key]
    return f"/{kind.collection}" if kind.singleton else f"/{kind.collection}/{name}"


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    """Make the API match the document: create and update, delete with --prune."""
    with open(args.file) if args.file != "-" else sys.stdin as f:
        desired = manifest.load(f.read())
    named = (k for k, kind in manifest.KINDS.items() if not kind.singleton and k not in desired)
    kinds = [*desired, *named] if args.prune else list(desired)
    changes = manifest.plan(desired, current_state(client, kinds), prune=args.prune)
    for ch in changes:
        label = f"{ch.kind.rstrip('s')} {ch.name}".strip()
        print(f"{'+' if ch.action == 'create' else '~' if ch.action == 'update' else '-'} {ch.action} {label}")
        if args.dry_run and ch.diff:
            print("\n".join("    " + line for line in ch.diff.splitlines()))
        if args.dry_run:
            continue
        try:
            client.call("DELETE" if ch.action == "delete" else "PUT", _path(ch.kind, ch.name), ch.body)
        except RequestFailed as exc:
            print(f"error: {label}: {exc}", file=sys.stderr)
            return 1
    if not changes:
        print("no changes")
    return 0


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    """Print one resource or a list as JSON."""
    kind = ALIASES.get(args.kind)
    if kind is None:
        print(f"error: unknown kind {args.kind!r}", file=sys.stderr)
        return 2
    path = _path(kind, args.name) if args.name else f"/{manifest.KINDS[kind].collection}"
    print(json.dumps(client.call("GET", path), indent=2))
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    """Print a domain's answer and the health of its pools and addresses."""
    st = client.call("GET", f"/domains/{args.domain}/status")
    ans = st.get("answer") or {}
    print(f"{st['domain']}  {st.get('status', 'enabled' if st['enabled'] else 'disabled')}")
    if ans:
        fb = "  (fallback: no pool available)" if ans.get("fallback") else ""
        print(f"answer: {ans.get('pool')} -> {', '.join(ans.get('records', []))}  ttl {ans.get('ttl')}{fb}")
    for pool in st.get("pools", []):
        print(f"  {pool['name']:<24} {_state(pool.get('available'))}")
        for a in pool.get("addresses", []):
            checks = "; ".join(
                f"{c['region']}: {'ok' if c['ok'] else c['error']} {c.get('rtt_ms') or ''}".rstrip()
                for c in a.get("checks", [])
            )
            print(f"    {a['name']:<22} {a['address']:<18} {_state(a.get('available'))}  {checks}")
    return 0


def _state(available: bool | None) -> str:
    return {True: "available", False: "UNAVAILABLE", None: "unknown"}[available]


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    """Print the switch and operation log, newest first."""
    q = [f"limit={args.limit}"] + [f"{k}={v}" for k, v in (("domain", args.domain), ("kind", args.kind)) if v]
    for ev in client.call("GET", "/events?" + "&".join(q))["events"]:
        print(f"{ev['at']}  {ev['kind']:<9} {ev.get('domain') or '-':<24} {ev['message']}")
    return 0


def cmd_explain(client: Client, args: argparse.Namespace) -> int:
    """Say which pool and addresses a domain answers, and why."""
    dom = client.call("GET", f"/domains/{args.domain}")
    st = client.call("GET", f"/domains/{args.domain}/status")
    pools = {p["name"]: p for p in st.get("pools", [])}
    print(f"{dom['name']}  {dom['record_type']}  ttl {dom['ttl']}  "
          f"{'enabled' if dom['enabled'] else 'disabled (edges answer REFUSED)'}")
    print(f"strategy between pools: {dom['lb_strategy']}"
          + (f" ({dom['sequence_mode']})" if dom["lb_strategy"] == "sequence" else ""))
    for ref in sorted(dom["pools"], key=lambda r: r["sequence"]):
        p = pools.get(ref["pool"], {})
        ok = [a["name"] for a in p.get("addresses", []) if a.get("available")]
        print(f"  #{ref['sequence']} {ref['pool']:<22} weight {ref['weight']:<3} {_state(p.get('available'))}"
              f"  available addresses: {', '.join(ok) or 'none'}")
    ans = st.get("answer")
    if ans:
        why = "no pool is available, so it fails open to the first enabled pool" if ans["fallback"] else (
            f"{ans['pool']} is the pool the {dom['lb_strategy']} strategy picks among the available ones")
        print(f"answer: {', '.join(ans['records']) or '(no records)'} from {ans['pool'] or '-'}: {why}")
    else:
        print("answer: none published yet (warming up or disabled)")
    if args.client_subnet:
        return _explain_client(client, args.client_subnet, dom)
    return 0


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _covers(entry: Network, net: Network) -> bool:
    """Whether topology ``entry`` contains ``net`` (never across address families)."""
    if isinstance(entry, ipaddress.IPv4Network) and isinstance(net, ipaddress.IPv4Network):
        return net.subnet_of(entry)
    if isinstance(entry, ipaddress.IPv6Network) and isinstance(net, ipaddress.IPv6Network):
        return net.subnet_of(entry)
    return False


def _explain_client(client: Client, subnet: str, dom: dict[str, Any]) -> int:
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        print(f"error: {subnet!r} is not a subnet", file=sys.stderr)
        return 2
    topo = client.call("GET", "/topology").get("entries", [])
    matches = [e for e in topo if _covers(ipaddress.ip_network(e["cidr"], strict=False), net)]
    best = max(matches, key=lambda e: ipaddress.ip_network(e["cidr"], strict=False).prefixlen, default=None)
    region = best["region"] if best else None
    print(f"client {net}: region {region or '(none: no topology entry matches)'}"
          + (f" via {best['cidr']}" if best else ""))
    if dom["lb_strategy"] == "source_nearest":
        print("  source_nearest answers the available pool of that region, else the first available pool")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="gtmctl", description="Manage a GTM through its REST API.")
    p.add_argument("--api", default=os.environ.get("GTM_API_URL", "http://127.0.0.1:8080"),
                   help="API base URL (env GTM_API_URL)")
    p.add_argument("--token", default=os.environ.get("GTM_API_TOKEN", ""), help="Bearer token (env GTM_API_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("apply", help="make the API match a YAML/JSON document")
    a.add_argument("-f", "--file", required=True, help="document path, or - for stdin")
    a.add_argument("--prune", action="store_true", help="delete resources the document does not list")
    a.add_argument("--dry-run", action="store_true", help="show the changes and their diff, change nothing")
    a.set_defaults(func=cmd_apply)
    g = sub.add_parser("get", help="print resources as JSON")
    g.add_argument("kind", help="pools, domains, templates, alert-targets, topology")
    g.add_argument("name", nargs="?")
    g.set_defaults(func=cmd_get)
    s = sub.add_parser("status", help="a domain's answer and health")
    s.add_argument("domain")
    s.set_defaults(func=cmd_status)
    e = sub.add_parser("events", help="switch and operation log")
    e.add_argument("--domain")
    e.add_argument("--kind", choices=["switch", "operation"])
    e.add_argument("--limit", type=int, default=20)
    e.set_defaults(func=cmd_events)
    x = sub.add_parser("explain", help="which pool and addresses a domain answers, and why")
    x.add_argument("domain")
    x.add_argument("--client-subnet", help="explain for a client in this subnet (source_nearest)")
    x.set_defaults(func=cmd_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one gtmctl command; return the exit code."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(Client(args.api, args.token), args))
    except (RequestFailed, manifest.ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
