"""auditd in force: the rules loaded in the kernel (`auditctl -l`), immutability as the inventory
says, auditing from boot. A container has no audit subsystem of its own: proven on the vm tier."""

from __future__ import annotations

import re

import pytest

from roles import audit as role
from roles.filesystem import FIND_SUID_SGID
from tests.compliance import os_state


AUDIT_WHY = "the audit subsystem is the provider's kernel's"


def _loaded(target) -> list[str]:
    target.require_kernel("the loaded audit rules (auditctl -l)", AUDIT_WHY)
    return target.fact("os:auditctl-l", lambda t: t.check_output("auditctl -l").splitlines())


def _status(target) -> dict[str, str]:
    target.require_kernel("the audit status (auditctl -s)", AUDIT_WHY)
    out = target.fact("os:auditctl-s", lambda t: t.check_output("auditctl -s"))
    return dict(line.split(None, 1) for line in out.splitlines() if " " in line)


@pytest.mark.control("hk-os-aud-01")
def test_rules_loaded(target):
    """Every audit rule hardkit writes is loaded in the kernel (identity, sudoers, sshd, privileged, time, modules, bot)"""
    rules = _loaded(target)
    privileged = target.fact("os:suid", lambda t: sorted(set(t.check_output(FIND_SUID_SGID).split())))
    want = role.expected_rule_counts(target.data, privileged)
    have: dict[str, int] = {}
    for rule in rules:
        m = re.search(r"(?:-k |key=)(\S+)", rule)
        if m:
            have[m.group(1)] = have.get(m.group(1), 0) + 1
    short = {k: (have.get(k, 0), n) for k, n in want.items() if have.get(k, 0) < n}
    assert not short, "loaded / expected rules per key: " + ", ".join(f"{k} {h}/{n}" for k, (h, n) in short.items())


@pytest.mark.control("hk-os-aud-02")
def test_enabled_and_immutable_as_asked(target):
    """Auditing is enabled, and locked (-e 2) exactly when the inventory asks"""
    status = _status(target)
    want = "2" if role.AUDIT_IMMUTABLE.value(target.data) else "1"
    assert status.get("enabled") == want, f"auditctl -s: enabled {status.get('enabled')}, want {want}"
    assert status.get("pid", "0") != "0", "auditd is not receiving events"


@pytest.mark.control("hk-os-aud-03")
def test_audit_from_boot(target):
    """Processes started before auditd are audited (audit=1 on the kernel command line)"""
    target.require_kernel("the kernel command line", "the provider boots its kernel")
    if not target.host.file(role.GRUB_DEFAULTS).exists:
        pytest.skip("no boot loader on this host (the hypervisor boots the kernel directly): "
                    "its command line is the hypervisor's")
    cmdline = target.check_output("cat /proc/cmdline").split()
    missing = [p for p in role.BOOT_PARAMETERS if p not in cmdline]
    assert not missing, f"kernel command line lacks {missing} (update-grub ran? rebooted since?)"


@pytest.mark.control("hk-os-aud-04")
def test_auditd_skips_itself_in_containers(target):
    """auditd is enabled, and never a failed unit where it cannot run"""
    unit = os_state.units(target, ["auditd.service"])["auditd.service"]
    assert unit.get("UnitFileState") == "enabled", unit
    assert unit.get("ActiveState") != "failed", unit
