"""Settings: every variable validated at start; a bad one stops the service naming it and its range."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import msgspec
import pytest

from shared.settings import ENV_VARS, LEAVES, Settings, SettingsError, env_name, load


def test_defaults_are_the_structs_defaults() -> None:
    s = load("edge", {})
    assert (s.edge.listen, s.edge.workers, s.edge.rrl.responses_per_s, s.scheduler.lease_s) == (
        "127.0.0.1:5300",
        1,
        200,
        2.0,
    )
    assert s.nats.name == "gtm-edge" and s.prober.id and s.scheduler.id  # derived values filled in
    loaded, default = msgspec.to_builtins(s), msgspec.to_builtins(Settings())
    for d in (loaded, default):
        d["nats"]["name"] = d["prober"]["id"] = d["scheduler"]["id"] = ""
    assert loaded == default  # nothing else is written anywhere but in the Structs


def test_every_setting_has_one_variable_named_after_its_path() -> None:
    assert env_name("edge.rrl.slip") == "GTM_EDGE_RRL_SLIP"
    assert env_name("nats.url") == "NATS_URL" and env_name("edge.listen") == "GTM_DNS_LISTEN"
    assert env_name("nats.name") is None
    assert len(ENV_VARS) == len(LEAVES) - 1  # all but the connection name, each once
    documented = {"NATS_URL", "GTM_API_LISTEN", "GTM_API_TOKEN", "GTM_DNS_LISTEN", "GTM_PROBER_REGION"}
    assert documented <= set(ENV_VARS)


def test_values_are_read_and_normalised() -> None:
    s = load(
        "edge",
        {
            "GTM_EDGE_WORKERS": "4",
            "GTM_SCHEDULER_LEASE_S": "0.5",
            "GTM_LOG_LEVEL": "DEBUG",
            "GTM_EDGE_ZONE": " Example.COM. ",
            "GTM_EDGE_NS": "ns1.example.com, NS2.example.net.",
            "GTM_EDGE_RRL_EXEMPT": "10.1.2.3/8",
            "GTM_NATS_REPLICAS": "",  # empty: the default
            "GTM_EDGE_UDP_GSO": "false",
        },
    )
    assert not s.edge.udp_gso and load("edge", {}).edge.udp_gso
    assert (s.edge.workers, s.scheduler.lease_s, s.log.level) == (4, 0.5, "debug")
    assert (s.edge.zone, s.edge.ns) == ("example.com", ("ns1.example.com", "ns2.example.net"))
    assert s.edge.rrl.exempt == ("10.0.0.0/8",) and s.nats.replicas == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GTM_EDGE_RRL_RESPONSES_PER_S": "-1"}, "GTM_EDGE_RRL_RESPONSES_PER_S='-1' is not allowed: it must be an integer from 0 to 1000000"),
        ({"GTM_EDGE_WORKERS": "0"}, "GTM_EDGE_WORKERS='0' is not allowed: it must be an integer from 1 to 64"),
        ({"GTM_SCHEDULER_LEASE_S": "0.1"}, "GTM_SCHEDULER_LEASE_S='0.1' is not allowed: it must be a number from 0.5 to 300"),
        ({"GTM_SCHEDULER_TICK_S": "0"}, "GTM_SCHEDULER_TICK_S='0' is not allowed: it must be a number > 0 and <= 10"),
        ({"GTM_PROBER_CONCURRENCY": "many"}, "GTM_PROBER_CONCURRENCY='many' is not allowed: it must be an integer from 1"),
        ({"GTM_NATS_REPLICAS": "7"}, "GTM_NATS_REPLICAS='7' is not allowed: it must be an integer from 0 to 5"),
        ({"GTM_EDGE_UDP_GSO": "yes"}, "GTM_EDGE_UDP_GSO='yes' is not allowed: it must be true or false (or 1 or 0)"),
        ({"GTM_LOG_FORMAT": "xml"}, "GTM_LOG_FORMAT='xml' is not allowed: it must be one of auto, console, json"),
        ({"GTM_PROBER_REGION": "eu.west"}, "GTM_PROBER_REGION='eu.west' is not allowed"),
        ({"GTM_EDGE_ZONE": "bad..zone"}, "GTM_EDGE_ZONE='bad..zone': bad label"),
        ({"GTM_DNS_LISTEN": "127.0.0.1:99999"}, "GTM_DNS_LISTEN: bad listen address"),
        ({"GTM_METRICS_LISTEN": "127.0.0.1:x"}, "GTM_METRICS_LISTEN: bad listen address"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_range(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load("edge", env)


@pytest.mark.parametrize(
    ("service", "env", "variable"),
    [
        ("edge", {"GTM_EDGE_RRL_RESPONSES_PER_S": "-1"}, "GTM_EDGE_RRL_RESPONSES_PER_S"),
        ("edge", {"GTM_EDGE_WORKERS": "0"}, "GTM_EDGE_WORKERS"),
        ("scheduler", {"GTM_SCHEDULER_LEASE_S": "0.1"}, "GTM_SCHEDULER_LEASE_S"),
        ("prober", {"GTM_PROBER_REGION": "a b"}, "GTM_PROBER_REGION"),
        ("config", {"GTM_API_LISTEN": "127.0.0.1:http"}, "GTM_API_LISTEN"),
    ],
)
def test_a_service_with_a_bad_value_stops_at_start_with_exit_code_2(
    service: str, env: dict[str, str], variable: str
) -> None:
    # NATS_URL points nowhere: the service must stop before it even tries to connect.
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env={**os.environ, "NATS_URL": "nats://127.0.0.1:1", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"gtm-{service}: {variable}"), done.stderr
