"""What hardkit's input chain lets in, judged as a whole from `nft -j list ruleset`.

Every rule that can accept (directly, through a verdict map, or in a chain it jumps to, with the
jump's matches carried along) must be one of the shapes hardkit allows: loopback, established or
related traffic, the ICMP types of roles/firewall.py, DHCP replies, and SSH on sshd's ports from
the allow-list sets. Anything else that accepts — `ip saddr X accept`, `meta l4proto tcp accept`,
a port in a vmap — is reported. Only hardkit's table needs judging: a packet must be accepted
by every base chain on the input hook, and hardkit's drops whatever it does not accept.
"""

from __future__ import annotations

import json

from roles.firewall import (DHCP_REPLIES, ICMP_ERRORS_V4, ICMP_ERRORS_V6, ICMP_PING, ICMPV6_MULTICAST,
                            ICMPV6_NEIGHBOUR, TABLE)

ICMP_V4 = set(ICMP_PING + ICMP_ERRORS_V4)
ICMP_V6 = set(ICMP_PING + ICMP_ERRORS_V6 + ICMPV6_NEIGHBOUR + ICMPV6_MULTICAST)
SSH_SETS = {"ip.saddr": "@ssh_allow_v4", "ip6.saddr": "@ssh_allow_v6"}
MAX_DEPTH = 16  # nft itself refuses deeper jump chains


def conditions(expr: list[dict]) -> dict[str, set]:
    """The positive matches of a rule as {'tcp.dport': {22}, 'ct.state': {'new'}, ...}; `!=` narrows nothing."""
    out: dict[str, set] = {}
    for e in expr:
        m = e.get("match")
        if not m or m.get("op") not in ("==", "in"):
            continue
        key = _key(m["left"])
        if key:
            out.setdefault(key, set()).update(_values(m["right"]))
    return out


def _key(left: dict) -> str | None:
    for kind in ("payload", "meta", "ct"):
        if kind in left:
            d = left[kind]
            return f"{d.get('protocol', kind)}.{d.get('field') or d.get('key')}"
    return None


def _values(right) -> list:
    if isinstance(right, dict) and "set" in right:
        return [_hashable(v) for v in right["set"]]
    if isinstance(right, list):
        return [_hashable(v) for v in right]
    return [_hashable(right)]


def _hashable(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def allowed(cond: dict[str, set], ssh_ports: set[int]) -> bool:
    """True when an accept under these matches is one of the openings hardkit intends."""
    def only(key, allowed_values):
        return bool(cond.get(key)) and cond[key] <= set(allowed_values)

    if only("meta.iif", {"lo"}) or only("meta.iifname", {"lo"}):
        return True
    if only("ct.state", {"established", "related"}):
        return True
    if only("icmp.type", ICMP_V4) or only("icmpv6.type", ICMP_V6):
        return True
    if any(cond.get("udp.sport") == {s} and cond.get("udp.dport") == {d} for s, d in DHCP_REPLIES):
        return True
    if only("tcp.dport", ssh_ports) and any(cond.get(k) == {v} for k, v in SSH_SETS.items()):
        return True
    return False


def unexpected_accepts(ruleset: list[dict], ssh_ports: set[int], table: str = TABLE,
                       family: str = "inet") -> list[str]:
    """Every way new inbound traffic is accepted other than hardkit's intended openings (empty: none)."""
    chains = {o["chain"]["name"]: o["chain"] for o in ruleset
              if "chain" in o and o["chain"]["table"] == table and o["chain"]["family"] == family}
    rules: dict[str, list[list[dict]]] = {}
    for o in ruleset:
        r = o.get("rule")
        if r and r["table"] == table and r["family"] == family:
            rules.setdefault(r["chain"], []).append(r["expr"])
    base = [c for c in chains.values() if c.get("hook") == "input"]
    if not base:
        return [f"no input chain in table {family} {table}"]
    found = []
    for chain in base:
        if chain.get("policy") != "drop":
            found.append(f"chain {chain['name']}: policy {chain.get('policy')} (everything not dropped is let in)")
        found += _walk(chain["name"], {}, rules, ssh_ports, 0)
    return found


def _walk(name: str, inherited: dict[str, set], rules, ssh_ports, depth) -> list[str]:
    if depth > MAX_DEPTH:
        return [f"chain {name}: jumps nested deeper than {MAX_DEPTH}"]
    found = []
    for expr in rules.get(name, []):
        cond = {k: set(v) for k, v in inherited.items()}
        for k, v in conditions(expr).items():
            cond[k] = cond[k] & v if k in cond else v
        for e in expr:
            target = (e.get("jump") or e.get("goto") or {}).get("target")
            if target:
                found += _walk(target, cond, rules, ssh_ports, depth + 1)
            if "accept" in e and not allowed(cond, ssh_ports):
                found.append(f"chain {name}: accepts {_describe(cond)}")
            if "vmap" in e and "accept" in json.dumps(e["vmap"]["data"]):
                found.append(f"chain {name}: a verdict map accepts by {_key(e['vmap']['key'])} ({_describe(cond)})")
    return found


def _describe(cond: dict[str, set]) -> str:
    return " ".join(f"{k} {sorted(map(str, v))}" for k, v in sorted(cond.items())) or "all traffic"
