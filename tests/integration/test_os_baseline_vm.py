"""The vm tier, on one QEMU target that boots once and reboots once per test run.

In file order (each phase is a module fixture, so a test run alone still gets its phases):
1. the pristine target, as a provider hands it over (root with the operator's key): its record,
   strict SSH with fresh host keys, its own identity, a real kernel that lets kernel.* sysctls be
   written, the lab leg from the allowed client;
2. the first deploy, with immutable audit rules (`audit_immutable`, -e 2): the kernel refuses a rule
   change; verify passes, kernel controls included; the reboot guard's sandboxed unit runs;
3. a deploy that changes the rules (one more watched path, and mutable from the next boot): the
   locked kernel keeps the old rules and the deploy marks a reboot as required;
4. the one reboot: the VM comes back in the same QEMU process (pids, port, tap), the pending rules
   are the ones loaded, nothing is pending any more, verify passes again, auditing survives a
   journald restart, and a redeploy changes nothing;
5. `down` leaves nothing behind.

Its own module (and lab) so that a parallel test run gives the slow vm tier a worker of its own.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import image, lab as lab_mod, network, target, vm
from sandbox.errors import LabError
from sandbox.paths import labs_dir
from tests.integration.labkit import hardkit, tcp_banner_cmd
from tests.integration.oslab import EXPECTED_SKIPS, deploy_ok, derived_inventory, os_changes, os_lab, reboot, root

pytestmark = [pytest.mark.lab, pytest.mark.vm]
PREFIX = "osvmit"
NAME = f"{PREFIX}-1"
#: Seconds the reboot may take under a software CPU while other lab modules load the same cores (a
#: CI run with parallel workers; one took longer than 600 s).
REBOOT_TIMEOUT = 900
#: Controls only a real kernel shows, each of which must PASS before and after the reboot.
KERNEL_CONTROLS = ("sysctl-30", "sysctl-34", "sysctl-35", "os-10", "os-12", "hk-os-aud-01", "hk-os-aud-02",
                   "hk-os-time-01", "package-08", "hk-os-kern-01", "os-14",
                   # process accounting (a container withholds CAP_SYS_PACCT) and /proc's hidepid remount
                   "hk-os-pacct-01", "hk-os-fs-06")
#: The watched path the second deploy adds (its rule can only load at the next boot).
EXTRA_PATH = "/etc/hardkit-extra/"


@pytest.fixture(scope="module")
def vmlab(tmp_path_factory):
    try:
        vm.check_host()
    except LabError as e:
        pytest.skip(str(e))
    image_ready = (image.image_dir() / "READY").read_text()
    # The bot and file integrity are proven on the nspawn tier (tests/integration/test_bot.py,
    # test_integrity.py); installing the bot, and AIDE hashing /usr at every deploy that changes the host,
    # under a software CPU add many minutes to each vm deploy and show nothing a real kernel adds.
    # Immutable audit rules from the first deploy: the rule change of phase 3 then needs the one reboot.
    # Under a software CPU unattended-upgrades, started on its own during the first deploy, held dpkg's
    # lock longer than a real VPS would (a CI run's first deploy failed on it): the deploy's apt waits longer here.
    yield from os_lab(PREFIX, "vm", tmp_path_factory.mktemp("osvm"), bot_enabled=False, integrity_enabled=False,
                      audit_immutable=True, apt_lock_wait_seconds=2400)
    assert (image.image_dir() / "READY").read_text() == image_ready, "the vm tier must reuse the lab image"


@pytest.fixture(scope="module")
def tgt(vmlab) -> target.Target:
    t = target.load(PREFIX, NAME)
    assert t is not None and t.tier == "vm"
    return t


# ---------------------------------------------------------------- 1. the pristine target


@pytest.fixture
def pristine(vmlab):
    if getattr(vmlab, "deployed", False):
        pytest.fail("this test looks at the target as the provider hands it over: run the module in file order")
    return vmlab


def _ssh_ok(lab, command: str, timeout: float = 120) -> str:
    # As root explicitly (before the deploy locks root out); probing other logins costs emulated crypto.
    res = lab.ssh(NAME, command, user="root", timeout=timeout)
    assert res.returncode == 0, f"{command}: {res.stderr}"
    return res.stdout.strip()


def test_target_record(pristine, tgt):
    assert tgt.alive("qemu")
    assert (tgt.lab_v4, tgt.lab_v6) == network.target_addresses(1)
    assert len(tgt.host_keys) == 3 and all(len(k.split()) == 2 for k in tgt.host_keys)
    timings = (tgt.dir / "timings.json").read_text()
    print(f"\nvm clone timings: {timings}")


def test_ssh_is_strict_and_uses_fresh_host_keys(pristine, tgt):
    lab = pristine
    assert _ssh_ok(lab, "id -un") == "root"
    guest_keys = {" ".join(line.split()[:2]) for line in _ssh_ok(lab, "cat /etc/ssh/ssh_host_*_key.pub").splitlines()}
    assert guest_keys == set(tgt.host_keys)
    golden_keys = {" ".join(line.split()[1:3]) for line in (vm.golden_dir() / "known_hosts").read_text().splitlines()}
    assert not guest_keys & golden_keys, "a clone must not keep the golden VM's host keys"
    # The same login with an empty known_hosts must be refused: checking is strict, not trust-on-first-use.
    cmd = lab_mod.ssh_command(NAME, ["true"])
    cmd = [("UserKnownHostsFile=/dev/null" if a.startswith("UserKnownHostsFile=") else a) for a in cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "verification failed" in res.stderr
    # The golden's bootstrap key no longer opens the clone.
    assert "hardkit-lab-vm-bootstrap" not in _ssh_ok(lab, "cat /root/.ssh/authorized_keys")


def test_identity_is_the_targets_own(pristine):
    out = _ssh_ok(pristine, "hostname; cat /etc/machine-id; date +%s").split()
    assert out[0] == NAME
    assert len(out[1]) == 32 and out[1] != "0" * 32
    assert abs(int(out[2]) - time.time()) < 30, "the restored clock must be set to now"


def test_real_kernel_not_a_container(pristine):
    out = _ssh_ok(pristine, "uname -r; systemd-detect-virt; systemd-detect-virt --container || true").splitlines()
    assert out[0] == vm.kernel_version()
    assert out[1] in ("qemu", "kvm")
    assert out[2] == "none"


def test_kernel_sysctl_is_writable(pristine):
    # nspawn denies every kernel.* sysctl ("permission denied on key"); a VM has its own kernel.
    assert _ssh_ok(pristine, "sysctl -w kernel.dmesg_restrict=1 >/dev/null && cat /proc/sys/kernel/dmesg_restrict") == "1"


def _lab_leg_answers(lab, tgt) -> None:
    for address in (tgt.lab_v4, tgt.lab_v6):
        res = lab.from_client("allowed", tcp_banner_cmd(address))
        assert res.stdout.startswith("SSH-2.0-"), f"allowed client -> {address}: {res.stdout} {res.stderr}"


def test_lab_leg_from_the_allowed_client(pristine, tgt):
    lab = pristine
    _lab_leg_answers(lab, tgt)
    assert _ssh_ok(lab, "ip -br link show lab0").split()[2] == vm.lab_mac(1)
    # The tap lives in the switch namespace only, never in the controller's.
    assert subprocess.run(["ip", "link", "show", f"t{tgt.index}"], capture_output=True).returncode != 0
    sw_links = subprocess.run(["ip", "-n", network.LabNet(PREFIX).switch_ns, "-br", "link"], capture_output=True, text=True).stdout
    assert f"t{tgt.index} " in sw_links


# ---------------------------------------------------------------- 2. deployed, audit rules locked


@pytest.fixture(scope="module")
def vm_deployed(vmlab):
    vmlab.deployed = True
    result = deploy_ok(vmlab)
    time.sleep(20)  # let timesyncd reach the lab's NTP responder
    return result


def _verify_passes(lab, inventory: Path, report: Path, phase: str) -> list[dict]:
    res = hardkit("verify", str(inventory), "--report-dir", str(report))
    rows = json.loads((report / "compliance.json").read_text())["controls"]
    assert res.returncode == 0, [r for r in rows if r["status"] not in ("PASS", "WAIVED")]
    statuses = {r["control"]: r["status"] for r in rows}
    for control in KERNEL_CONTROLS:
        assert statuses[control] == "PASS", (phase, control, statuses[control])
    skipped = [r for r in rows if r["status"] == "SKIP"]
    assert all(any(why in " ".join(r["details"]) for why in EXPECTED_SKIPS if why != "vm tier")
               for r in skipped), skipped
    return rows


def test_vm_audit_rules_are_immutable_once_deployed(vmlab, vm_deployed):
    """-e 2 locks the rules: the kernel refuses a new one, root's included."""
    status = root(vmlab, NAME, "auditctl -s | head -1; auditctl -w /etc/hostname -k probe 2>&1; true").stdout
    assert "enabled 2" in status and "immutable" in status, status


def test_vm_kernel_controls_hold_once_deployed(vmlab, vm_deployed, tmp_path):
    _verify_passes(vmlab, vmlab.os_inventory, tmp_path / "deployed", "deployed")


def test_vm_guard_unit_runs_in_its_sandbox(vmlab, vm_deployed):
    """On a real kernel the sandboxed unit can still ask needrestart, logind and systemd."""
    from roles.updates import GUARD, GUARD_UNIT

    state = json.loads(root(vmlab, NAME, f"{GUARD} status --json").stdout)
    assert state["decision"] == "none-required", state  # so starting the unit cannot reboot the VM
    res = root(vmlab, NAME, f"systemctl start {GUARD_UNIT}; systemctl show -p Result --value {GUARD_UNIT}; "
                            f"journalctl -u {GUARD_UNIT} -o cat --no-pager | grep -c 'no reboot required'", timeout=600)
    result, logged = res.stdout.split()[:2]
    assert result == "success" and int(logged) >= 1, res.stdout + res.stderr


# ---------------------------------------------------------------- 3. a rule change waits for the reboot


@pytest.fixture(scope="module")
def rules_changed(vmlab, vm_deployed, tmp_path_factory):
    """Deploy one more watched path, with the rules mutable from the next boot on (so the journald check
    after the reboot can see auditing switched off, were it switched off)."""
    from roles.audit import BOT_CONFIG_PATHS

    changed = derived_inventory(vmlab, tmp_path_factory.mktemp("osvm-more"),
                                **{**vmlab.os_overrides, "audit_immutable": False},
                                audit_bot_config_paths=BOT_CONFIG_PATHS.default + [EXTRA_PATH])
    result = vmlab.deploy(inventory_path=changed)
    assert result.ok, {n: (h.failed, h.error) for n, h in result.hosts.items()}
    return changed


def test_vm_rule_change_waits_for_a_reboot(vmlab, rules_changed):
    """On a locked kernel a rule change is left for the next boot and marks a reboot as required."""
    pending = root(vmlab, NAME, "auditctl -s | head -1; auditctl -l | grep -c -F hardkit-extra || true; "
                                "cat /run/reboot-required.pkgs; /usr/local/sbin/hardkit-reboot-guard status --json")
    lines = pending.stdout.splitlines()
    assert lines[0].startswith("enabled 2") and lines[1] == "0", pending.stdout  # still locked, the old rules
    assert "auditd-rules" in lines[2:-1] and json.loads(lines[-1])["required"], pending.stdout


# ---------------------------------------------------------------- 4. the one reboot


@pytest.fixture(scope="module")
def rebooted(vmlab, tgt, rules_changed) -> float:
    started = time.monotonic()
    reboot(vmlab, NAME, timeout=REBOOT_TIMEOUT)
    took = time.monotonic() - started
    print(f"\nvm reboot to SSH: {took:.1f}s")
    return took


def test_reboot_comes_back(vmlab, tgt, rebooted):
    """A guest reboot resets the machine inside the same QEMU process: target, port and tap stay."""
    again = target.load(PREFIX, NAME)
    assert again.pids == tgt.pids and again.ssh_port == tgt.ssh_port
    # Right after the boot, at CI's load, the guest's sshd took more than is_running's default 2 s to greet.
    assert lab_mod.is_running(again, banner_timeout=30)
    assert root(vmlab, NAME, "hostname").stdout.strip() == NAME
    _lab_leg_answers(vmlab, tgt)


def test_vm_pending_audit_rules_load_at_the_reboot(vmlab, rebooted):
    state = root(vmlab, NAME, "auditctl -s | head -1; auditctl -l | grep -c -F hardkit-extra; "
                              "/usr/local/sbin/hardkit-reboot-guard status --json")
    lines = state.stdout.splitlines()
    assert lines[0] == "enabled 1" and int(lines[1]) >= 1, state.stdout + state.stderr
    assert json.loads(lines[-1])["decision"] == "none-required", state.stdout


def test_vm_kernel_controls_hold_after_the_reboot(vmlab, rules_changed, rebooted, tmp_path):
    _verify_passes(vmlab, rules_changed, tmp_path / "rebooted", "rebooted")


def test_vm_auditing_survives_a_journald_restart(vmlab, rebooted):
    """A systemd update restarts journald; auditing must stay on (Debian's journald default would turn it off)."""
    res = root(vmlab, NAME, "systemctl restart systemd-journald && sleep 2 && auditctl -s | head -1")
    assert res.stdout.strip() == "enabled 1", res.stdout + res.stderr


def test_vm_redeploy_changes_nothing(vmlab, rules_changed, rebooted):
    second = vmlab.deploy(inventory_path=rules_changed)
    assert second.ok and not os_changes(second), os_changes(second)


# ---------------------------------------------------------------- 5. down


def test_down_leaves_nothing(vmlab, tgt):
    pid = tgt.pids["qemu"]
    tdir = tgt.dir
    vmlab.down()
    assert not target.pid_alive(pid)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_mentions(p, str(tdir))]
    assert not leftovers, f"processes still use {tdir}: {leftovers}"
    assert not [ns for ns in network.list_netns() if ns.startswith(f"{network.ns_tag()}-{PREFIX}-")]
    assert subprocess.run(["ip", "link", "show", f"t{tgt.index}"], capture_output=True).returncode != 0
    assert not tdir.exists() and not (labs_dir() / PREFIX).exists()


def _cmdline_mentions(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes() and target.pid_alive(int(proc.name))
    except OSError:
        return False
