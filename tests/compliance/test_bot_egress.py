"""The bot's egress allow-list as the kernel has it (`nft -j list ruleset`), against roles/bot_egress.py
and the inventory's `bot_egress_endpoints`: the bot's uid reaches only loopback, DNS to the host's
resolvers and the exchange endpoints; anything else it sends is counted and dropped.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from roles import bot_egress as role
from roles import bot_egress_refresh as tool
from roles.bot_paths import BOT_USER
from tests.compliance import nft_state, os_state


def _bot_uid(target) -> int:
    return target.fact("bot:uid", lambda t: int(t.check_output(f"id -u {BOT_USER}").strip()))


def accepted_traffic(expr: list[dict]) -> str | None:
    """What an accept rule of the bot's chain lets through, or None for anything unexpected."""
    matches = [e["match"] for e in expr if "match" in e]
    rights = [m["right"] for m in matches]
    keys = [m["left"].get("meta", m["left"].get("ct", {})).get("key") for m in matches]
    if keys == ["oif"] and rights == ["lo"]:
        return "loopback"
    if keys == ["state"] and set(rights[0]) <= {"established", "related"}:
        return "replies"
    if rights and rights[-1] in [f"@{s}" for s in tool.RESOLVER_SETS.values()] and 53 in rights:
        return "dns"
    if rights and rights[-1] in [f"@{s}" for s in tool.EXCHANGE_SETS.values()] and \
            [p["payload"]["field"] for p in matches[-1]["left"].get("concat", [])] == ["daddr", "dport"]:
        return "exchange"
    return None


@pytest.mark.control("hk-bot-egr-01")
def test_only_the_bots_uid_is_judged(target):
    """The bot's table is loaded: its output chain sends only the bot's uid to the allow-list"""
    out = nft_state.chain(target, "output", tool.TABLE)
    assert out, f"inet {tool.TABLE} has no output chain: the bot's egress is not filtered"
    assert out["hook"] == "output" and out["policy"] == "accept", out
    jumps = nft_state.rules(target, "output", tool.TABLE)
    skuid = {"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": _bot_uid(target)}}
    assert jumps == [[skuid, {"jump": {"target": role.CHAIN}}]], jumps


@pytest.mark.control("hk-bot-egr-02")
def test_bot_reaches_only_dns_and_the_exchange(target):
    """The bot's uid may reach only loopback, DNS to the host's resolvers and the exchange endpoints"""
    chain = nft_state.chain(target, role.CHAIN, tool.TABLE)
    assert chain, f"chain {role.CHAIN} of inet {tool.TABLE} is not loaded"
    rules = nft_state.rules(target, role.CHAIN, tool.TABLE)
    accepted = [accepted_traffic(e) for e in rules if nft_state.verdict(e) == "accept"]
    assert None not in accepted, "an accept rule outside the allow-list"
    assert {"loopback", "replies", "dns", "exchange"} <= set(accepted)


@pytest.mark.control("hk-bot-egr-03")
def test_everything_else_is_counted_and_dropped(target):
    """Everything else the bot's uid sends is logged (rate-limited), counted and dropped"""
    assert role.COUNTER in {c["name"] for c in nft_state.objects(target, "counter", tool.TABLE)}
    chain = nft_state.rules(target, role.CHAIN, tool.TABLE)
    assert chain[-1] == [{"counter": role.COUNTER}, {"drop": None}], chain[-1:]
    assert [e for e in chain[-2] if "limit" in e] and \
        [e for e in chain[-2] if "log" in e and e["log"]["prefix"] == role.LOG_PREFIX], chain[-2:]


def _sets_in_force(target) -> dict[str, set[str]]:
    objs = [o for o in nft_state.ruleset(target) if o.get("set", {}).get("table") == tool.TABLE]
    sets = tool.loaded_elements({"nftables": objs})
    assert sets is not None, f"the sets of inet {tool.TABLE} are not loaded"
    return sets


@pytest.mark.control("hk-bot-egr-04")
def test_sets_hold_the_inventorys_endpoints(target):
    """The allow-list holds exactly the inventory's endpoints (names as last resolved) and the host's resolvers"""
    config = os_state.text(target, role.CONFIG_FILE)
    assert config == role.render_config(target.data), f"{role.CONFIG_FILE} is not the inventory's"
    endpoints = [tool.parse_endpoint(e) for e in role.ENDPOINTS.value(target.data)]
    state = json.loads(target.check_output(f"cat /var/lib/{role.STATE_DIR}/state.json 2>/dev/null || echo '{{}}'"))
    resolved = state.get("resolved", {})
    unresolved = sorted({e.host for e in endpoints if e.address is None and not resolved.get(e.host)})
    assert not unresolved, f"never resolved on the host: {unresolved}"
    nameservers = tool.resolvers(os_state.text(target, tool.RESOLV_CONF) or "")
    want = tool.wanted_elements(endpoints, resolved, nameservers)
    assert _sets_in_force(target) == want
    for e in endpoints:
        if e.address:
            family = tool.EXCHANGE_SETS[ipaddress.ip_address(e.address).version]
            assert f"{e.address} . {e.port}" in want[family]


@pytest.mark.control("hk-bot-egr-05")
def test_allow_list_loads_at_boot(target):
    """The allow-list is loaded at boot (its unit enabled and active, before the bot's)"""
    unit = os_state.units(target, [role.BOOT_UNIT])[role.BOOT_UNIT]
    assert unit.get("UnitFileState") == "enabled" and unit.get("ActiveState") == "active", unit
    assert os_state.text(target, role.RULESET_FILE) == role.render_ruleset()


@pytest.mark.control("hk-bot-egr-06")
def test_names_are_refreshed(target):
    """A timer re-resolves the endpoints' names, and its last run succeeded"""
    units = os_state.units(target, [role.REFRESH_TIMER, role.REFRESH_UNIT])
    timer, service = units[role.REFRESH_TIMER], units[role.REFRESH_UNIT]
    assert timer.get("UnitFileState") == "enabled" and timer.get("ActiveState") == "active", timer
    assert service.get("Result") == "success", service
