"""SSH server: the effective configuration (`sshd -T`), not the file, against what roles/ssh.py sets.

Control ids are dev-sec ssh-baseline's where one maps (sshd-NN), hardkit's own otherwise (hk-ssh-NN).
"""

from __future__ import annotations

import re

import pytest

from roles.admin import SSH_GROUP
from roles.ssh import (CRYPTO_DIRECTIVES, HOST_KEYS, MIN_MODULI_BITS, RSA_HOST_KEY_BITS, SSHD_CONFIG, crypto_lists,
                       settings, settings_for_login)
from roles.second_factor_data import people
from tests.compliance.sshd_contexts import disagreements
from tests.compliance.sshd_state import effective, in_every_login_context, one, supported

#: dev-sec ssh-baseline control for each directive roles/ssh.py sets (others get hk-ssh ids below).
DEVSEC_IDS = {
    "port": "sshd-07", "addressfamily": "sshd-08", "strictmodes": "sshd-11", "syslogfacility": "sshd-12",
    "loglevel": "sshd-13", "permituserenvironment": "sshd-17", "logingracetime": "sshd-18",
    "maxauthtries": "sshd-19", "maxsessions": "sshd-20", "maxstartups": "sshd-21",
    "pubkeyauthentication": "sshd-22", "ignorerhosts": "sshd-23", "ignoreuserknownhosts": "sshd-24",
    "hostbasedauthentication": "sshd-25", "passwordauthentication": "sshd-27", "permitemptypasswords": "sshd-28",
    "kbdinteractiveauthentication": "sshd-29", "kerberosauthentication": "sshd-30",
    "kerberosorlocalpasswd": "sshd-31", "kerberosticketcleanup": "sshd-32", "gssapiauthentication": "sshd-33",
    "gssapicleanupcredentials": "sshd-34", "tcpkeepalive": "sshd-35", "clientaliveinterval": "sshd-36",
    "clientalivecountmax": "sshd-37", "permittunnel": "sshd-38", "allowtcpforwarding": "sshd-39",
    "allowagentforwarding": "sshd-40", "gatewayports": "sshd-41", "x11forwarding": "sshd-42",
    "x11uselocalhost": "sshd-43", "printmotd": "sshd-44", "printlastlog": "sshd-45", "banner": "sshd-46",
    "permitrootlogin": "sshd-06",
}
HK_IDS = {"authenticationmethods": "hk-ssh-01", "allowgroups": "hk-ssh-02", "usepam": "hk-ssh-03",
          "allowstreamlocalforwarding": "hk-ssh-04", "compression": "hk-ssh-05", "usedns": "hk-ssh-06",
          "authorizedkeysfile": "hk-ssh-13", "authorizedkeyscommand": "hk-ssh-14",
          "authorizedprincipalsfile": "hk-ssh-15", "trustedusercakeys": "hk-ssh-16"}
CRYPTO_IDS = {"ciphers": "sshd-01", "kexalgorithms": "sshd-02", "macs": "sshd-03", "hostkeyalgorithms": "hk-ssh-07"}


#: Set in the config but not shown by Debian's `sshd -T`: checked on the wire instead (sshd-47).
NOT_IN_SSHD_T = {"debianbanner"}


def _setting_params():
    params = []
    # The port depends on host data: its expected value is taken per host inside the test.
    for directive, _ in settings({}):
        key = directive.lower()
        if key in NOT_IN_SSHD_T:
            continue
        control = DEVSEC_IDS.get(key) or HK_IDS[key]
        params.append(pytest.param(directive, marks=pytest.mark.control(control), id=key))
    return params


@pytest.mark.parametrize("directive", _setting_params())
def test_sshd_setting_in_force(target, directive):
    """sshd's effective setting is hardkit's"""
    expected = dict(settings(target.data))[directive]
    assert one(effective(target), directive).lower() == expected.lower()


@pytest.mark.parametrize("directive", _setting_params())
def test_sshd_setting_holds_for_a_real_login_context(target, directive):
    """The setting also holds inside Match blocks, for the admin from every allowed range to every sshd port"""
    # A provider's drop-in may add `Match Address`/`LocalPort` blocks for the operator's real address or port;
    # hardkit's own Match blocks (second factor, automation key) make the expected value depend on the address.
    admin, wrong = target.data["admin_user"], {}
    per_context = in_every_login_context(target)
    assert per_context, "no login context evaluated"
    for spec, config in per_context.items():
        addr = dict(part.split("=", 1) for part in spec.split(","))["addr"]
        expected = dict(settings_for_login(target.data, admin, addr))[directive]
        wrong.update(disagreements({spec: config}, directive, expected))
    assert not wrong, f"{directive} is not as expected for: " + "; ".join(f"{c} -> {v}" for c, v in wrong.items())


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.control(c), id=k) for k, c in CRYPTO_IDS.items()])
def test_crypto_policy_in_force(target, key):
    """Only the crypto policy's algorithms that this OpenSSH supports are offered"""
    expected = crypto_lists(supported(target))[key]
    assert expected, f"the host's OpenSSH supports none of the {CRYPTO_DIRECTIVES[key]} policy"
    assert one(effective(target), key).split(",") == expected


@pytest.mark.control("sshd-04")
def test_ssh_folder_permissions(target):
    """/etc/ssh is root's and not writable by others"""
    d = target.host.file("/etc/ssh")
    assert d.is_directory and d.user == "root" and d.group == "root"
    assert d.mode & 0o022 == 0, oct(d.mode)


@pytest.mark.control("sshd-05")
def test_sshd_config_permissions(target):
    """sshd_config is root's, mode 600"""
    f = target.host.file(SSHD_CONFIG)
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)


def _banner(target) -> str:
    port = int(one(effective(target), "port"))
    return target.fact("ssh banner", lambda t: t.check_output(
        f"timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; head -n1 <&3'").strip())


@pytest.mark.control("sshd-10")
def test_protocol_2_only(target):
    """The server speaks SSH protocol 2 only"""
    assert _banner(target).startswith("SSH-2.0-"), _banner(target)


@pytest.mark.control("sshd-47")
def test_banner_hides_the_distribution(target):
    """The SSH banner does not announce the distribution (DebianBanner no)"""
    assert "debian" not in _banner(target).lower(), _banner(target)


@pytest.mark.control("sshd-14")
def test_host_keys(target):
    """Only the ed25519 and RSA host keys are offered (no ECDSA)"""
    assert effective(target).get("hostkey") == HOST_KEYS


@pytest.mark.control("hk-ssh-08")
def test_rsa_host_key_size(target):
    """The RSA host key has at least 4096 bits"""
    bits = int(target.check_output("ssh-keygen -lf /etc/ssh/ssh_host_rsa_key.pub").split()[0])
    assert bits >= RSA_HOST_KEY_BITS


def _openssh_version(target) -> tuple[int, int]:
    version = target.check_output("ssh -V 2>&1")
    return tuple(map(int, re.search(r"OpenSSH_(\d+)\.(\d+)", version).groups()))


@pytest.mark.control("sshd-15")
def test_no_legacy_login(target):
    """OpenSSH no longer has UseLogin (removed in 7.4): logins never go through login(1)"""
    assert _openssh_version(target) >= (7, 4)
    assert "uselogin" not in effective(target)


@pytest.mark.control("sshd-16")
def test_privilege_separation_always_on(target):
    """OpenSSH always separates privileges (UsePrivilegeSeparation removed in 7.5, sandbox built in)"""
    assert _openssh_version(target) >= (7, 5)
    assert "useprivilegeseparation" not in effective(target)


@pytest.mark.control("sshd-09")
def test_listen_address_restricted(target):
    """sshd listens only on chosen addresses"""
    addresses = effective(target).get("listenaddress", [])
    assert addresses and not any(a.startswith(("0.0.0.0", "[::]")) for a in addresses), addresses


@pytest.mark.control("sshd-48")
def test_strong_dh_moduli(target):
    """/etc/ssh/moduli holds no group-exchange prime below 3072 bits"""
    weak = target.check_output(f"awk '!/^#/ && NF >= 7 && $5 < {MIN_MODULI_BITS - 1}' /etc/ssh/moduli | wc -l")
    assert weak.strip() == "0"


@pytest.mark.control("hk-ssh-09")
def test_provider_drop_ins_cannot_weaken(target):
    """Drop-ins in sshd_config.d are read after hardkit's global settings, so their own cannot override them"""
    text = target.check_output(f"cat {SSHD_CONFIG}")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    includes = [i for i, line in enumerate(lines) if line.lower().startswith("include")]
    # Only hardkit's own Match blocks (second_factor_admins) may follow it: a Match line ends the global part.
    first_match = next((i for i, line in enumerate(lines) if line.lower().startswith("match ")), len(lines))
    assert includes == [first_match - 1], "the Include of sshd_config.d must follow every global setting"
    # And whatever the drop-ins say, passwords stay off in force (cloud-init's 50-cloud-init.conf says yes).
    assert one(effective(target), "passwordauthentication") == "no"


@pytest.mark.control("hk-ssh-10")
def test_sshd_running_and_enabled(target):
    """sshd runs and starts at boot"""
    svc = target.host.service("ssh")
    assert svc.is_running and svc.is_enabled


@pytest.mark.control("hk-ssh-11")
def test_no_change_left_unconfirmed(target):
    """No guarded change is waiting for confirmation (none will revert under the operator)"""
    assert target.check_output("/usr/local/sbin/hardkit-guard pending").strip() == ""
    timers = target.check_output("systemctl list-timers --all --no-legend 'hardkit-revert-*' | wc -l")
    assert timers.strip() == "0"


@pytest.mark.control("hk-ssh-12")
def test_only_the_ssh_group_may_log_in(target):
    """Only the SSH group may log in, and its members are exactly the admin and the listed people"""
    assert effective(target)["allowgroups"] == [SSH_GROUP]
    _, _, gid, listed = target.check_output(f"getent group {SSH_GROUP}").strip().split(":")
    members = set(filter(None, listed.split(",")))
    assert members == {target.data["admin_user"], *people(target.data)}, sorted(members)
    # An account whose primary group it is would be a member too, without being listed.
    primary = target.check_output(f"getent passwd | awk -F: -v g={gid} '$4 == g {{print $1}}'").split()
    assert primary == [], primary
