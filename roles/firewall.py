"""Firewall (nftables): default-deny in both directions, SSH only from the allow-list, v4 and v6.

One table of our own (`inet hardkit`) replaced atomically; never `flush ruleset`, which would
drop fail2ban's table too. The file is the one Debian's nftables.service loads at boot. It is
validated with `nft -c` and applied through the guard: a new SSH connection must get through
the new rules, or the host puts the old ones back by itself.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from roles import backup_data, guard
from roles.access_data import ADMIN_USER, SSH_ALLOW_FROM, SSHD_PORT
from roles.data import DataKey, is_bool, one_of

NFT_CONF = "/etc/nftables.conf"
TABLE = "hardkit"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "firewall"

EGRESS_POLICY = DataKey(
    "egress_policy", "restricted",
    "Outbound traffic: 'restricted' allows DNS, NTP, HTTP/HTTPS, ICMP and DHCP plus `egress_allow`; "
    "'open' allows everything out.",
    one_of("restricted", "open"))


def _check_egress(v) -> str | None:
    if not isinstance(v, list):
        return f"must be a list of {{'proto': 'tcp'|'udp', 'port': N, 'to': [CIDR, ...]}}, not {v!r}"
    problems = []
    for i, rule in enumerate(v):
        if not isinstance(rule, dict) or set(rule) - {"proto", "port", "to", "comment"}:
            problems.append(f"entry {i} must have only proto, port, to, comment")
            continue
        if rule.get("proto") not in ("tcp", "udp"):
            problems.append(f"entry {i}: proto must be 'tcp' or 'udp'")
        port = rule.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            problems.append(f"entry {i}: port must be 1-65535")
        for net in rule.get("to", []) or ["(missing)"]:
            try:
                ipaddress.ip_network(str(net), strict=True)
            except ValueError:
                problems.append(f"entry {i}: {net!r} is not a CIDR")
    return "; ".join(problems) or None


EGRESS_ALLOW = DataKey(
    "egress_allow", [],
    "Extra outbound rules for the restricted policy, per destination: "
    "[{'proto': 'tcp', 'port': 443, 'to': ['203.0.113.0/24'], 'comment': 'exchange API'}].",
    _check_egress)

LOG_DROPS = DataKey("firewall_log_drops", True, "Log dropped packets (rate-limited to 5 a minute).", is_bool)

KEYS = [EGRESS_POLICY, EGRESS_ALLOW, LOG_DROPS]

#: Inbound ICMP a working network needs (the template's groups; the compliance check allows exactly these).
ICMP_PING = ("echo-request",)
ICMP_ERRORS_V4 = ("destination-unreachable", "time-exceeded", "parameter-problem")
ICMP_ERRORS_V6 = ("destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem")
ICMPV6_NEIGHBOUR = ("nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert", "nd-redirect")
ICMPV6_MULTICAST = ("mld-listener-query", "mld-listener-report", "mld2-listener-report")
#: Inbound DHCP replies (source port, destination port): v4 server 67 -> client 68, v6 547 -> 546.
DHCP_REPLIES = ((67, 68), (547, 546))


def split_families(networks: list[str]) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) networks, overlaps merged: nftables interval sets refuse overlapping elements."""
    nets = [ipaddress.ip_network(n, strict=True) for n in networks]
    return tuple([str(n) for n in ipaddress.collapse_addresses(x for x in nets if x.version == v)] for v in (4, 6))


def egress_rules(rules: list[dict]) -> list[str]:
    out = []
    for r in rules:
        v4, v6 = split_families(r["to"])
        note = f' comment "{r["comment"]}"' if r.get("comment") else ""
        if v4:
            out.append(f"ip daddr {{ {', '.join(v4)} }} {r['proto']} dport {r['port']} accept{note}")
        if v6:
            out.append(f"ip6 daddr {{ {', '.join(v6)} }} {r['proto']} dport {r['port']} accept{note}")
    return out


def render(data, ssh_ports: list[int] | None = None) -> str:
    """The nftables.conf for a host's data (ssh_ports overrides the port, e.g. during a port move)."""
    allow_v4, allow_v6 = split_families(SSH_ALLOW_FROM.value(data))
    ports = ssh_ports or [SSHD_PORT.value(data)]
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, keep_trailing_newline=True)
    return env.get_template("nftables.conf.j2").render(
        allow_v4=allow_v4, allow_v6=allow_v6,
        ssh_ports=str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, ports)) + " }",
        log_drops=LOG_DROPS.value(data), egress_open=EGRESS_POLICY.value(data) == "open",
        egress_allow=egress_rules(EGRESS_ALLOW.value(data) + backup_data.egress_rules(data)),
        icmp_ping=ICMP_PING, icmp_errors_v4=ICMP_ERRORS_V4, icmp_errors_v6=ICMP_ERRORS_V6,
        icmpv6_neighbour=ICMPV6_NEIGHBOUR, icmpv6_multicast=ICMPV6_MULTICAST, dhcp=DHCP_REPLIES)


def ruleset_change(data, ports: list[int], confirm_port: int, label: str = ""):
    """Apply the ruleset for these SSH ports through the guard (also used mid-way through a port move)."""
    apt.packages(name="Install nftables", packages=["nftables"])
    guard.guarded_change(
        name=f"nftables ruleset{label} (validated, auto-revert unless a fresh login confirms)",
        change_id="firewall", contents={NFT_CONF: render(data, ports)}, modes={NFT_CONF: "755"},
        validate=["nft -c -f {staged}" + NFT_CONF],
        reload=f"nft -f {NFT_CONF}", revert_seconds=guard.REVERT_SECONDS.value(data),
        confirm_user=ADMIN_USER.value(data), confirm_sshd_port=confirm_port)


@deploy("Firewall")
def firewall():
    from pyinfra import host

    wanted = SSHD_PORT.value(host.data)
    ruleset_change(host.data, [wanted], confirm_port=wanted)
    systemd.service(name="Load the ruleset at boot", service="nftables.service", enabled=True)


apply = firewall
