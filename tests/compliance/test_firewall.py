"""Firewall: what the kernel enforces (`nft -j list ruleset`) against roles/firewall.py and the inventory."""

from __future__ import annotations

import ipaddress

import pytest

from roles.access_data import SSH_ALLOW_FROM, SSHD_PORT
from roles.firewall import DHCP_REPLIES, EGRESS_POLICY, LOG_DROPS, NFT_CONF, render, split_families
from tests.compliance import nft_input, nft_state

@pytest.mark.control("hk-fw-01")
def test_inbound_default_deny(target):
    """Inbound traffic is dropped unless a rule accepts it (IPv4 and IPv6)"""
    c = nft_state.chain(target, "input")
    assert c and c["hook"] == "input" and c["policy"] == "drop"


@pytest.mark.control("hk-fw-02")
def test_no_forwarding(target):
    """Nothing is routed through the host"""
    c = nft_state.chain(target, "forward")
    assert c and c["hook"] == "forward" and c["policy"] == "drop"


@pytest.mark.control("hk-fw-03")
def test_allow_list_loaded(target):
    """The SSH allow-list in force is exactly the inventory's, v4 and v6"""
    v4, v6 = split_families(SSH_ALLOW_FROM.value(target.data))
    assert nft_state.set_networks(target, "ssh_allow_v4") == {ipaddress.ip_network(n) for n in v4}
    assert nft_state.set_networks(target, "ssh_allow_v6") == {ipaddress.ip_network(n) for n in v6}


@pytest.mark.control("hk-fw-04")
def test_only_ssh_is_open_and_only_to_the_allow_list(target):
    """No inbound port is open but SSH, and SSH only to the allow-list"""
    # The input chain as a whole: every accept (also via jumps and verdict maps) must be an intended opening.
    assert nft_input.unexpected_accepts(nft_state.ruleset(target), {SSHD_PORT.value(target.data)}) == []
    ssh_rules = [expr for expr in nft_state.rules(target, "input") if nft_state.verdict(expr) == "accept"
                 and nft_input.conditions(expr).get("tcp.dport") == {SSHD_PORT.value(target.data)}]
    assert len(ssh_rules) == 2, "one SSH rule per address family"


@pytest.mark.control("hk-fw-05")
def test_outbound_policy(target):
    """Outbound traffic follows the documented policy (default: restricted)"""
    c = nft_state.chain(target, "output")
    want = "drop" if EGRESS_POLICY.value(target.data) == "restricted" else "accept"
    assert c and c["hook"] == "output" and c["policy"] == want


@pytest.mark.control("hk-fw-06")
def test_ruleset_persists_across_boots(target):
    """The boot-time ruleset file is hardkit's (no flush ruleset) and nftables.service loads it"""
    f = target.host.file(NFT_CONF)
    assert f.user == "root" and f.mode & 0o022 == 0
    assert f.content_string == render(target.data)
    assert not [line for line in f.content_string.splitlines() if line.strip().startswith("flush ruleset")]
    assert target.host.service("nftables").is_enabled


@pytest.mark.control("hk-fw-07")
def test_drops_are_counted_and_logged(target):
    """Dropped packets are counted and logged (rate-limited)"""
    names = {c["name"] for c in nft_state.objects(target, "counter")}
    assert {"dropped_in", "dropped_out"} <= names
    logs = [e["log"] for expr in nft_state.rules(target, "input") for e in expr if "log" in e]
    if LOG_DROPS.value(target.data):
        assert logs and logs[0]["prefix"].startswith("hardkit-drop-in")
    else:
        assert not logs


@pytest.mark.control("hk-fw-08")
def test_nothing_but_ssh_listens_publicly(target):
    """No process but sshd listens on a non-loopback address"""
    public = []
    for line in target.check_output("ss -H -tulpn").splitlines():
        cols = line.split()
        local = cols[4]
        addr = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
        if addr in ("127.0.0.1", "::1") or addr.startswith("127."):
            continue
        if cols[0] == "udp" and int(local.rsplit(":", 1)[1]) in {client for _, client in DHCP_REPLIES}:
            continue  # DHCP clients (replies only, see hk-fw-04)
        public.append(line)
    assert all('"sshd"' in line for line in public), "\n".join(public)
