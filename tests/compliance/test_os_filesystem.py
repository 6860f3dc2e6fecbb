"""Filesystem and packages: linux-baseline os-06, os-11, os-13..16, package-01..09 and hardkit's
file controls (world-writable files, the SUID/SGID allow-list, identity and SSH file modes)."""

from __future__ import annotations

import pytest

from roles import audit as audit_role
from roles import filesystem as role
from tests.compliance import os_state


def _suid_files(target) -> list[str]:
    return target.fact("os:suid", lambda t: sorted(set(t.check_output(role.FIND_SUID_SGID).split())))


@pytest.mark.control("os-06")
def test_os_06_no_blacklisted_suid(target):
    """No SUID/SGID bit on the baseline's blacklisted programs"""
    found = set(_suid_files(target)) & set(role.SUID_BLACKLIST)
    assert not found, f"blacklisted SUID/SGID programs: {', '.join(sorted(found))}"


@pytest.mark.control("hk-os-fs-01")
def test_suid_sgid_allow_list(target):
    """Every SUID/SGID file is on the allow-list"""
    unknown = [p for p in _suid_files(target) if p not in role.SUID_SGID_ALLOWED]
    assert not unknown, f"SUID/SGID files not on the allow-list: {', '.join(unknown)}"
    stripped = [p for p in _suid_files(target) if p in role.SUID_STRIP]
    assert not stripped, f"bits should have been removed: {stripped}"


@pytest.mark.control("hk-os-fs-02")
def test_no_world_writable(target):
    """No world-writable file; every world-writable folder is sticky"""
    found = target.check_output(role.FIND_WORLD_WRITABLE).splitlines()
    assert not found, "; ".join(found[:20])


@pytest.mark.control("os-11")
def test_os_11_var_log(target):
    """/var/log belongs to root"""
    user, group, _ = os_state.stats(target, ["/var/log"])["/var/log"]
    assert user == "root" and group in ("root", "syslog"), f"{user}:{group}"


@pytest.mark.control("os-13")
def test_os_13_cron(target):
    """cron files and folders are root's, closed to group and others"""
    st = os_state.stats(target, role.CRON_PATHS)
    bad = {p: f"{u}:{g} {oct(m)}" for p, (u, g, m) in st.items() if u != "root" or m & 0o077}
    assert not bad, f"{bad}"


@pytest.mark.control("hk-os-fs-03")
def test_sensitive_file_modes(target):
    """Identity files, their backups, /etc/ssh and its private host keys have safe owners and modes"""
    st = os_state.stats(target, list(role.PERMISSIONS))
    bad = {p: st[p] for p, (u, g, m) in role.PERMISSIONS.items() if p in st and st[p] != (u, g, int(m, 8))}
    assert not bad, f"{bad}"
    keys = target.check_output("stat -c '%n|%U|%a' /etc/ssh/ssh_host_*_key 2>/dev/null || true").split()
    loose = [k for k in keys if not k.endswith("|root|600")]
    assert not loose, f"host private keys: {loose}"


def _mount_check(target, flag: str):
    have = os_state.mounts(target)
    bad = []
    for point, spec in role.mount_policy(target.data).items():
        if flag in spec["flags"] and flag not in have.get(point, set()):
            bad.append(f"{point} ({','.join(sorted(have.get(point, {'not mounted'})))})")
    assert not bad, f"missing {flag}: {'; '.join(bad)}"


@pytest.mark.control("os-14")
def test_os_14_noexec(target):
    """/dev, /dev/shm, /tmp, /var/tmp are mounted noexec"""
    if not role.TMP_NOEXEC.value(target.data):
        pytest.skip("waived: tmp_noexec=false in the inventory (programs must run from /tmp)")
    _mount_check(target, "noexec")


@pytest.mark.control("os-15")
def test_os_15_nosuid(target):
    """/dev, /dev/shm, /tmp, /var/tmp (and /run) are mounted nosuid"""
    _mount_check(target, "nosuid")
    assert "nosuid" in os_state.mounts(target).get("/run", set())


@pytest.mark.control("os-16")
def test_os_16_nodev(target):
    """/dev/shm, /tmp, /var/tmp (and /run) are mounted nodev"""
    _mount_check(target, "nodev")
    assert "nodev" in os_state.mounts(target).get("/run", set())


@pytest.mark.control("hk-os-fs-04")
def test_mount_options_survive_boot(target):
    """The mount options are in fstab and re-applied at boot"""
    fstab = os_state.text(target, role.FSTAB) or ""
    assert role.FSTAB_BEGIN in fstab and role.FSTAB_END in fstab
    unit = os_state.units(target, [role.MOUNT_UNIT])[role.MOUNT_UNIT]
    assert unit.get("UnitFileState") == "enabled" and unit.get("ActiveState") == "active", unit


@pytest.mark.control("hk-os-fs-06")
def test_proc_hides_other_users_processes(target):
    """/proc shows each user only their own processes (hidepid=invisible)"""
    have = os_state.mounts(target).get("/proc", set())
    assert role.PROC_HIDEPID in have, f"/proc is mounted {','.join(sorted(have))}"
    # In force: an unprivileged process (nobody, no groups, no capabilities) lists only its own.
    owners = target.check_output("setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "
                                 "sh -c 'for p in /proc/[0-9]*; do stat -c %u \"$p\"; done' | sort -u").split()
    assert owners == ["65534"], f"nobody sees processes of the users {owners}"


#: package-0x -> (title, packages that must be absent)
ABSENT = {
    "package-01": ("No inetd or xinetd", ["inetutils-inetd", "openbsd-inetd", "rlinetd", "xinetd", "inetd"]),
    "package-02": ("No telnet server", ["telnetd", "inetutils-telnetd", "telnetd-ssl"]),
    "package-03": ("No rsh server", ["rsh-server", "rsh-redone-server"]),
    "package-05": ("No NIS server (ypserv)", ["ypserv", "nis"]),
    "package-06": ("No TFTP server", ["tftpd", "tftpd-hpa", "atftpd", "tftp-server"]),
    "package-09": ("No prelink", ["prelink"]),
    "hk-os-pkg-01": ("No clear-text clients or talk/finger services",
                     ["telnet", "inetutils-telnet", "rsh-client", "rsh-redone-client", "talk", "talkd",
                      "inetutils-talkd", "finger", "fingerd", "rwho", "rwhod", "tftp", "tftp-hpa"]),
}


def _make_absent_check(control: str, names: list[str]):
    def check(target):
        assert set(names) <= set(role.LEGACY_PACKAGES), "the role must remove what the check forbids"
        present = sorted(set(names) & set(os_state.packages(target)))
        assert not present, f"installed: {', '.join(present)}"
    return check


os_state.register_checks(globals(), ABSENT, _make_absent_check)


@pytest.mark.control("package-08")
def test_package_08_auditd_installed_and_configured(target):
    """auditd is installed and auditd.conf has the baseline's settings"""
    assert "auditd" in os_state.packages(target)
    have = {k.lower(): v.lower() for k, v in
            os_state.key_values(os_state.text(target, audit_role.AUDITD_CONF), sep="=").items()}
    wrong = {k: have.get(k) for k in audit_role.BASELINE_AUDITD_KEYS
             if have.get(k) != audit_role.AUDITD_SETTINGS[k].lower()}
    assert not wrong, f"auditd.conf differs: {wrong}"


@pytest.mark.control("package-08")
def test_package_08_auditd_running(target):
    """auditd is running"""
    target.require_kernel("auditd", "a container has no audit netlink socket")
    unit = os_state.units(target, ["auditd.service"])["auditd.service"]
    assert unit.get("ActiveState") == "active", unit


@pytest.mark.control("hk-os-fs-05")
def test_compilers_root_only(target):
    """Compilers and assemblers on the host: only root may run them"""
    found = target.check_output(role.COMPILERS_COMMAND).split()
    st = os_state.stats(target, found)
    user, group, mode = role.COMPILER_MODE
    wrong = [f"{p} {st.get(p)}" for p in found if st.get(p) != (user, group, int(mode, 8))]
    assert not wrong, f"not {user}:{group} {mode}: " + ", ".join(wrong)
