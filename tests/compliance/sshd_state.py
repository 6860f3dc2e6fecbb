"""Facts about sshd gathered once per host: the effective configuration and what OpenSSH supports."""

from __future__ import annotations

from roles.access_data import ADMIN_USER, SSH_ALLOW_FROM
from roles.ssh import QUERY_FOR, SSHD_CONFIG
from tests.compliance import sshd_contexts


def effective(target, context: str | None = None) -> dict[str, list[str]]:
    """`sshd -T` as {keyword: [values]} (keywords may repeat, e.g. hostkey). `context` is sshd's -C."""
    cmd = "sshd -T" + (f" -C {context}" if context else "")

    return target.fact(f"sshd -T {context}", lambda t: sshd_contexts.parse(t.check_output(cmd)))


def in_every_login_context(target) -> dict[str, dict[str, list[str]]]:
    """`sshd -T -C` for the admin from every allowed range to every listening port (Match blocks applied)."""
    def produce(t):
        config_text = t.check_output(f"cat {SSHD_CONFIG} {SSHD_CONFIG}.d/*.conf 2>/dev/null || true")
        ports = sshd_contexts.sshd_socket_ports(t.check_output("ss -H -tlnp"))
        assert ports, "sshd has no listening socket"
        specs = sshd_contexts.contexts(ADMIN_USER.value(t.data), SSH_ALLOW_FROM.value(t.data), ports, config_text,
                                       _global_addresses(t))
        return sshd_contexts.split_batch(t.check_output(sshd_contexts.batch_script(specs)))

    return target.fact("sshd -T every login context", produce)


def _global_addresses(target) -> dict[int, str]:
    """The host's first global address per IP version: the local address a client connects to."""
    out: dict[int, str] = {}
    for link in target.json("ip -j addr show scope global"):
        for a in link.get("addr_info", []):
            if a.get("local") and a.get("family") in ("inet", "inet6"):  # ip -j lists non-matching links as {}
                out.setdefault(4 if a["family"] == "inet" else 6, a["local"])
    return out


def supported(target) -> dict[str, list[str]]:
    def produce(t):
        result = {}
        for query in sorted(set(QUERY_FOR.values())):
            result[query] = t.check_output(f"ssh -Q {query}").split()
        return result

    return target.fact("ssh -Q", produce)


def one(config: dict[str, list[str]], key: str) -> str:
    values = config.get(key.lower(), [])
    assert len(values) == 1, f"sshd -T shows {key} {values!r}"
    return values[0]
