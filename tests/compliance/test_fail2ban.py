"""fail2ban: running on the journal, banning through nftables, never banning the operator."""

from __future__ import annotations

import ipaddress

import pytest

from roles.fail2ban import JAILS, never_banned


def _status(target) -> str:
    return target.fact("fail2ban status", lambda t: t.check_output("fail2ban-client status"))


@pytest.mark.control("hk-f2b-01")
def test_jails_running(target):
    """fail2ban runs at boot with the sshd and recidive jails"""
    svc = target.host.service("fail2ban")
    assert svc.is_running and svc.is_enabled
    listed = _status(target).split("Jail list:")[1].replace(",", " ").split()
    assert set(JAILS) <= set(listed)


@pytest.mark.control("hk-f2b-02")
def test_sshd_jail_reads_the_journal(target):
    """The sshd jail reads the systemd journal (Debian 12 has no auth.log)"""
    dump = target.check_output("fail2ban-client -d")
    assert "['add', 'sshd', 'systemd']" in dump
    assert "_SYSTEMD_UNIT=sshd.service" in dump or "_COMM=sshd" in dump


@pytest.mark.control("hk-f2b-03")
def test_bans_go_through_nftables(target):
    """Bans are nftables set entries (IPv4 and IPv6), not iptables rules"""
    for jail in JAILS:
        actions = target.check_output(f"fail2ban-client get {jail} actions")
        assert "nftables" in actions, actions


@pytest.mark.control("hk-f2b-04")
def test_operator_addresses_never_banned(target):
    """The operator's fixed allow-list addresses are on the ignore list"""
    ignored = target.check_output("fail2ban-client get sshd ignoreip")
    listed = {ipaddress.ip_network(tok.strip("|`- "), strict=False) for tok in ignored.split()
              if _is_net(tok.strip("|`- "))}
    for net in never_banned(target.data):
        assert ipaddress.ip_network(net, strict=False) in listed, f"{net} not in ignoreip: {ignored}"


def _is_net(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False
