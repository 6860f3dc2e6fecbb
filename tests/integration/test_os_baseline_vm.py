"""The OS baseline on a real kernel (vm tier): kernel.* sysctls, module blacklist, audit rules in
the kernel, NTP sync, before and after a real reboot; the reboot guard's sandbox; immutable audit rules.

Its own module (and lab) so that a parallel test run gives the slow vm tier a worker of its own.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.oslab import (EXPECTED_SKIPS, deploy_ok, derived_inventory, os_changes, os_lab, reboot, root,
                                     verify)

pytestmark = [pytest.mark.lab, pytest.mark.vm]


@pytest.fixture(scope="module")
def vmlab(tmp_path_factory):
    # The bot and file integrity are proven on the nspawn tier (tests/integration/test_bot.py,
    # test_integrity.py); installing the bot, and AIDE hashing /usr at every deploy that changes the host,
    # under a software CPU add many minutes to each vm deploy and show nothing a real kernel adds.
    yield from os_lab("osvmit", "vm", tmp_path_factory.mktemp("osvm"), bot_enabled=False, integrity_enabled=False)


@pytest.fixture(scope="module")
def vm_deployed(vmlab):
    first = deploy_ok(vmlab)
    time.sleep(20)  # let timesyncd reach the lab's NTP responder
    return first


def test_vm_kernel_controls_hold_before_and_after_reboot(vmlab, vm_deployed, tmp_path):
    n = vmlab.names[0]
    for phase in ("deployed", "rebooted"):
        report = tmp_path / phase
        res = verify(vmlab, "--report-dir", str(report))
        rows = json.loads((report / "compliance.json").read_text())["controls"]
        assert res.returncode == 0, [r for r in rows if r["status"] not in ("PASS", "WAIVED")]
        statuses = {r["control"]: r["status"] for r in rows}
        for control in ("sysctl-30", "sysctl-34", "sysctl-35", "os-10", "os-12", "hk-os-aud-01", "hk-os-aud-02",
                        "hk-os-time-01", "package-08", "hk-os-kern-01", "os-14"):
            assert statuses[control] == "PASS", (phase, control, statuses[control])
        skipped = [r for r in rows if r["status"] == "SKIP"]
        assert all(any(why in " ".join(r["details"]) for why in EXPECTED_SKIPS if why != "vm tier")
                   for r in skipped), skipped
        if phase == "deployed":
            reboot(vmlab, n, timeout=900)
    second = vmlab.deploy(inventory_path=vmlab.os_inventory)
    assert second.ok and not os_changes(second), os_changes(second)


def test_vm_guard_unit_runs_in_its_sandbox(vmlab, vm_deployed):
    """On a real kernel the sandboxed unit can still ask needrestart, logind and systemd."""
    from roles.updates import GUARD, GUARD_UNIT

    n = vmlab.names[0]
    state = json.loads(root(vmlab, n, f"{GUARD} status --json").stdout)
    assert state["decision"] == "none-required", state  # so starting the unit cannot reboot the VM
    res = root(vmlab, n, f"systemctl start {GUARD_UNIT}; systemctl show -p Result --value {GUARD_UNIT}; "
                         f"journalctl -u {GUARD_UNIT} -o cat --no-pager | grep -c 'no reboot required'", timeout=600)
    result, logged = res.stdout.split()[:2]
    assert result == "success" and int(logged) >= 1, res.stdout + res.stderr


def test_vm_auditing_survives_a_journald_restart(vmlab, vm_deployed):
    """A systemd update restarts journald; auditing must stay on (Debian's journald default would turn it off)."""
    res = root(vmlab, vmlab.names[0], "systemctl restart systemd-journald && sleep 2 && auditctl -s | head -1")
    assert res.stdout.strip() == "enabled 1", res.stdout + res.stderr


def test_vm_immutable_audit_rules_wait_for_a_reboot(vmlab, vm_deployed, tmp_path):
    """-e 2 locks the rules; a later rule change is left for the next boot and marks a reboot as required."""
    from roles.audit import BOT_CONFIG_PATHS

    n = vmlab.names[0]
    locked = derived_inventory(vmlab, tmp_path, **vmlab.os_overrides, audit_immutable=True)
    assert vmlab.deploy(inventory_path=locked).ok
    status = root(vmlab, n, "auditctl -s | head -1; auditctl -w /etc/hostname -k probe 2>&1; true").stdout
    assert "enabled 2" in status and "immutable" in status, status
    (tmp_path / "more").mkdir()
    more = derived_inventory(vmlab, tmp_path / "more", **vmlab.os_overrides, audit_immutable=True,
                             audit_bot_config_paths=BOT_CONFIG_PATHS.default + ["/etc/hardkit-extra/"])
    assert vmlab.deploy(inventory_path=more).ok
    pending = root(vmlab, n, "cat /run/reboot-required.pkgs; /usr/local/sbin/hardkit-reboot-guard status --json")
    assert "auditd-rules" in pending.stdout and json.loads(pending.stdout.splitlines()[-1])["required"], pending.stdout
    root(vmlab, n, "rm -f /run/reboot-required /run/reboot-required.pkgs")
