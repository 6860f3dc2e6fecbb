"""The firewall as the kernel has it (`nft -j list ruleset`), read once per host."""

from __future__ import annotations

import ipaddress

from roles.firewall import TABLE


def ruleset(target) -> list[dict]:
    return target.fact("nft ruleset", lambda t: t.json("nft -j list ruleset")["nftables"])


def objects(target, kind: str, table: str = TABLE, family: str = "inet") -> list[dict]:
    return [o[kind] for o in ruleset(target)
            if kind in o and o[kind].get("table") == table and o[kind].get("family") == family]


def chain(target, name: str, table: str = TABLE) -> dict | None:
    return next((c for c in objects(target, "chain", table) if c["name"] == name), None)


def rules(target, chain_name: str, table: str = TABLE) -> list[list[dict]]:
    return [r["expr"] for r in objects(target, "rule", table) if r["chain"] == chain_name]


def set_networks(target, name: str, table: str = TABLE, family: str = "inet") -> set:
    s = next((x for x in objects(target, "set", table, family) if x["name"] == name), None)
    assert s is not None, f"set {family} {table} {name} is not loaded"
    return {_network(e) for e in s.get("elem", [])}


def _network(elem):
    if isinstance(elem, dict) and "prefix" in elem:
        return ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
    if isinstance(elem, dict) and "elem" in elem:  # an element with a timeout or counter
        return _network(elem["elem"]["val"])
    return ipaddress.ip_network(elem)


def matches(expr: list[dict]) -> list[tuple[str, str, object]]:
    """(protocol, field, right) of each payload match of a rule, e.g. ('tcp', 'dport', 22)."""
    out = []
    for e in expr:
        m = e.get("match")
        if m and "payload" in m["left"]:
            p = m["left"]["payload"]
            out.append((p.get("protocol"), p.get("field"), m["right"]))
    return out


def verdict(expr: list[dict]) -> str | None:
    for e in expr:
        for v in ("accept", "drop", "reject", "jump", "goto"):
            if v in e:
                return v
    return None
