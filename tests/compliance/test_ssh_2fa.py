"""Two factors for people, the key alone only for automation from the controllers (issue 13).

Each control reads what sshd enforces for a given login (`sshd -T -C user=...,addr=...`), not the
file we wrote. Without second_factor_admins in the inventory these controls do not apply (skipped,
saying so): sshd is then key-only for the admin, which the hk-ssh controls prove.
"""

from __future__ import annotations

import ipaddress

import pytest

from roles.admin import SSH_GROUP, admin_authorized_keys_text
from roles.second_factor import PACKAGES, PAM_SSHD, USERS_FILE, pam_sshd_text, person_keys_text
from roles.second_factor_data import FIDO2, FIDO2_ALGORITHMS, TOTP, automation_networks, enabled, people, users_with
from roles.ssh import settings_for_login
from tests.compliance import sshd_state

TWO_FACTORS = "publickey,keyboard-interactive"
#: Addresses tried as "not a controller" when the allow-list itself has none outside automation_from.
OUTSIDE_CANDIDATES = ["192.0.2.1", "2001:db8:ffff::1"]


def _require_2fa(target) -> None:
    if not enabled(target.data):
        pytest.skip("no second_factor_admins in the inventory: sshd is key-only for the admin (hk-ssh controls)")


def _address_in(network: str) -> str:
    net = ipaddress.ip_network(network)
    return str(next(iter(net.hosts()), net.network_address))


def _outside_address(data) -> str:
    """An address that is not a controller's: an allow-listed one if there is any, else a documentation one."""
    automation = [ipaddress.ip_network(n) for n in automation_networks(data)]
    for candidate in [_address_in(n) for n in data["ssh_allow_from"]] + OUTSIDE_CANDIDATES:
        if not any(ipaddress.ip_address(candidate) in n for n in automation):
            return candidate
    raise AssertionError("automation_from covers every candidate address")


def _users_of(target, method: str) -> list[str]:
    _require_2fa(target)
    users = users_with(target.data, method)
    if not users:
        pytest.skip(f"no {method} admin in the inventory")
    return users


def _login_rules(target, user: str, addr: str, *keys: str) -> dict[str, str]:
    """What sshd enforces for a login of `user` from `addr`, checked against what the roles render for it."""
    cfg = sshd_state.effective(target, f"user={user},host=hardkit-check,addr={addr}")
    expected = dict(settings_for_login(target.data, user, addr))
    got = {k: sshd_state.one(cfg, k) for k in keys}
    assert {k: v.lower() for k, v in got.items()} == {k: expected[k].lower() for k in keys}, (user, addr)
    return {k.lower(): v for k, v in got.items()}


def _person_account(target, name: str, entry: dict) -> None:
    user = target.host.user(name)
    assert user.exists and SSH_GROUP in user.groups, f"{name} must exist and be in {SSH_GROUP}"
    assert target.check_output(f"passwd -S {name}").split()[1] == "L", f"{name}'s password must stay locked"
    keys = target.host.file(f"/home/{name}/.ssh/authorized_keys")
    assert (keys.user, keys.mode) == (name, 0o600)
    assert keys.content_string == person_keys_text(entry)


@pytest.mark.control("hk-2fa-01")
def test_totp_admins_need_key_and_code(target):
    """TOTP admins: key, then a code from pam_oath; the PAM stack never asks for a password"""
    totp = _users_of(target, TOTP)
    for pkg in PACKAGES:
        assert target.host.package(pkg).is_installed, f"{pkg} missing"
    pam = target.host.file(PAM_SSHD)
    assert (pam.user, pam.mode) == ("root", 0o644) and pam.content_string == pam_sshd_text()
    for name in totp:
        _person_account(target, name, people(target.data)[name])
        for addr in (_address_in(automation_networks(target.data)[0]), _outside_address(target.data)):
            got = _login_rules(target, name, addr, "AuthenticationMethods", "KbdInteractiveAuthentication")
            assert got["authenticationmethods"] == TWO_FACTORS, (name, addr)


@pytest.mark.control("hk-2fa-02")
def test_totp_seeds_are_root_only(target):
    """TOTP seeds: only in the root-only pam_oath file, one line for each TOTP admin and no one else"""
    totp = _users_of(target, TOTP)
    f = target.host.file(USERS_FILE)
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)
    # Only the user column is read back: a seed must never reach the report.
    held = sorted(target.check_output(f"awk 'NF >= 4 {{print $2}}' {USERS_FILE}").split())
    assert held == totp


@pytest.mark.control("hk-2fa-03")
def test_fido2_admins_need_a_verified_security_key(target):
    """FIDO2 admins: only sk-ssh-ed25519 keys, accepted only with the user verified by the key (PIN or fingerprint)"""
    for name in _users_of(target, FIDO2):
        _person_account(target, name, people(target.data)[name])
        got = _login_rules(target, name, _outside_address(target.data), "PubkeyAcceptedAlgorithms",
                           "PubkeyAuthOptions", "AuthenticationMethods")
        assert got["pubkeyacceptedalgorithms"].split(",") == FIDO2_ALGORITHMS
        assert got["pubkeyauthoptions"] == "verify-required"


@pytest.mark.control("hk-2fa-04")
def test_automation_key_alone_only_from_the_controllers(target):
    """The automation account's key works only from automation_from, the one place a key alone is enough"""
    _require_2fa(target)
    admin = target.data["admin_user"]
    keys = target.host.file(f"/home/{admin}/.ssh/authorized_keys").content_string
    assert keys == admin_authorized_keys_text(target.data)
    assert all(line.startswith('from="') for line in keys.splitlines())
    for network in automation_networks(target.data):
        got = _login_rules(target, admin, _address_in(network), "AuthenticationMethods")
        assert got["authenticationmethods"] == "publickey", network
    outside = _outside_address(target.data)
    assert _login_rules(target, admin, outside, "AuthenticationMethods")["authenticationmethods"] == TWO_FACTORS


@pytest.mark.control("hk-2fa-05")
def test_no_login_without_a_key_and_never_a_password(target):
    """Every login starts with a key; password authentication is off for everyone, from everywhere"""
    _require_2fa(target)
    users = [target.data["admin_user"], *sorted(people(target.data)), "nosuchuser"]
    addrs = [_address_in(automation_networks(target.data)[0]), _outside_address(target.data)]
    for user in users:
        for addr in addrs:
            got = _login_rules(target, user, addr, "PasswordAuthentication", "PermitEmptyPasswords",
                               "AuthenticationMethods")
            assert got["passwordauthentication"] == got["permitemptypasswords"] == "no", (user, addr)
            assert all(m.split(",")[0] == "publickey" for m in got["authenticationmethods"].split()), (user, addr)
