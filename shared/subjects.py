"""Every NATS subject, stream, bucket and KV key name, built by functions.

No other module spells a subject string literally.  Domain names go into
subjects as they are (their labels become tokens); pool and address names may
contain dots, so they pass through :func:`token` first.
"""

from __future__ import annotations

CONFIG_BUCKET = "gtm_config"
LEASES_BUCKET = "gtm_leases"

STREAM_ANSWERS = "ANSWERS"
STREAM_POOL_STATE = "POOL_STATE"
STREAM_EVENTS = "EVENTS"
STREAM_HEALTH = "HEALTH"

PROBE_RESULT_ALL = "probe.result.>"
POOL_STATE_ALL = "pool.state.>"
ANSWERS_ALL = "answers.publish.>"
EVENTS_ALL = "events.>"
HEALTH_ALL = "health.log.>"
SWITCH_EVENTS_ALL = "events.switch.>"
OPERATION_EVENTS_ALL = "events.operation.>"
CONFIG_APPLY = "config.apply"

POOL_PREFIX = "pools."
DOMAIN_PREFIX = "domains."
TEMPLATE_PREFIX = "templates."
ALERT_PREFIX = "alerts."
TOPOLOGY_KEY = "topology"
SCHEDULER_LEASE_KEY = "scheduler"
PROBER_MEMBERS_ALL = "prober.members.>"

_ANSWERS_PREFIX = "answers.publish."
_POOL_STATE_PREFIX = "pool.state."


def kv_stream(bucket: str) -> str:
    """The stream that holds KV bucket ``bucket`` (JetStream's naming)."""
    return f"KV_{bucket}"


def kv_subject_prefix(bucket: str) -> str:
    """The subject prefix of the keys of KV bucket ``bucket`` (JetStream's naming)."""
    return f"$KV.{bucket}."


def token(name: str) -> str:
    """Make a pool or address name safe as one subject token / KV key part."""
    return name.replace(".", "=2E")


def untoken(tok: str) -> str:
    """Invert :func:`token`."""
    return tok.replace("=2E", ".")


def address_key(pool: str, address: str) -> str:
    """Stable identity of one address inside one pool (``pool/address``)."""
    return f"{token(pool)}/{token(address)}"


def probe_result(region: str, key: str) -> str:
    """Subject of one probe result from ``region`` for address ``key``."""
    return f"probe.result.{region}.{key}"


def pool_state(pool: str) -> str:
    """Subject of a pool's published view."""
    return f"{_POOL_STATE_PREFIX}{token(pool)}"


def answers(domain: str) -> str:
    """Subject of a domain's compiled answer set."""
    return f"{_ANSWERS_PREFIX}{domain}"


def switch_event(domain: str) -> str:
    """Subject of a switch event of ``domain``."""
    return f"events.switch.{domain}"


def operation_event(resource: str, name: str) -> str:
    """Subject of an operation-log entry for a config resource."""
    return f"events.operation.{resource}.{token(name)}"


def health_log(pool: str, address: str) -> str:
    """Subject of the health-log entries of one address of one pool."""
    return f"health.log.{token(pool)}.{token(address)}"


def health_logs(pool: str = "", address: str = "") -> str:
    """The subject filter of the health log of a pool (every address when ``address`` is ""), or of all."""
    if not pool:
        return HEALTH_ALL
    return health_log(pool, address) if address else f"health.log.{token(pool)}.*"


def pool_key(name: str) -> str:
    """KV key of a pool in ``gtm_config``."""
    return f"{POOL_PREFIX}{token(name)}"


def domain_key(fqdn: str) -> str:
    """KV key of an access domain in ``gtm_config``."""
    return f"{DOMAIN_PREFIX}{fqdn}"


def template_key(name: str) -> str:
    """KV key of a health-check template in ``gtm_config``."""
    return f"{TEMPLATE_PREFIX}{token(name)}"


def alert_key(name: str) -> str:
    """KV key of an alert target in ``gtm_config``."""
    return f"{ALERT_PREFIX}{token(name)}"


def prober_members(region: str) -> str:
    """Subject on which the probers of ``region`` announce themselves."""
    return f"prober.members.{region}"


def parse_config_key(key: str) -> tuple[str, str]:
    """Split a ``gtm_config`` key into ``("pool" | "domain", name)``."""
    if key.startswith(POOL_PREFIX):
        return "pool", untoken(key[len(POOL_PREFIX) :])
    if key.startswith(DOMAIN_PREFIX):
        return "domain", key[len(DOMAIN_PREFIX) :]
    if key.startswith(TEMPLATE_PREFIX):
        return "template", untoken(key[len(TEMPLATE_PREFIX) :])
    if key.startswith(ALERT_PREFIX):
        return "alert", untoken(key[len(ALERT_PREFIX) :])
    if key == TOPOLOGY_KEY:
        return "topology", ""
    return "", key
