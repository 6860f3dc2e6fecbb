"""The vm tier on one real QEMU target: a real kernel, strict SSH, the lab leg, a reboot, a clean down.

Slow-ish (about a minute with the golden snapshot cached; its first build adds about half a
minute): run with `pytest -m vm tests/integration/test_vm_tier.py`. The lab image is reused
from the default lab dir, never rebuilt here.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sandbox import image, lab as lab_mod, network, target, vm
from sandbox.errors import LabError
from sandbox.paths import labs_dir
from sandbox.readiness import ssh_banner
from tests.integration.labkit import boot, tcp_banner_cmd

pytestmark = [pytest.mark.vm, pytest.mark.lab]
PREFIX = "vmt"
NAME = f"{PREFIX}-1"
#: Seconds a reboot may take under a software CPU while other lab modules load the same cores (a CI
#: run with parallel workers); the OS baseline's vm reboot allows the same.
REBOOT_WINDOW = 900


@pytest.fixture(scope="module")
def lab():
    try:
        vm.check_host()
    except LabError as e:
        pytest.skip(str(e))
    image_ready = (image.image_dir() / "READY").read_text()
    handle = boot(PREFIX, count=1, tier="vm")
    yield handle
    handle.down()
    assert (image.image_dir() / "READY").read_text() == image_ready, "the vm tier must reuse the lab image"


@pytest.fixture(scope="module")
def tgt(lab) -> target.Target:
    t = target.load(PREFIX, NAME)
    assert t is not None and t.tier == "vm"
    return t


def _ssh_ok(lab, command: str, timeout: float = 120) -> str:
    # As root explicitly: nothing deploys to this target, and probing other logins costs emulated crypto.
    res = lab.ssh(NAME, command, user="root", timeout=timeout)
    assert res.returncode == 0, f"{command}: {res.stderr}"
    return res.stdout.strip()


def test_target_record(tgt):
    assert tgt.alive("qemu")
    assert (tgt.lab_v4, tgt.lab_v6) == network.target_addresses(1)
    assert len(tgt.host_keys) == 3 and all(len(k.split()) == 2 for k in tgt.host_keys)
    timings = (tgt.dir / "timings.json").read_text()
    print(f"\nvm clone timings: {timings}")


def test_ssh_is_strict_and_uses_fresh_host_keys(lab, tgt):
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


def test_identity_is_the_targets_own(lab):
    out = _ssh_ok(lab, "hostname; cat /etc/machine-id; date +%s").split()
    assert out[0] == NAME
    assert len(out[1]) == 32 and out[1] != "0" * 32
    assert abs(int(out[2]) - time.time()) < 30, "the restored clock must be set to now"


def test_real_kernel_not_a_container(lab):
    out = _ssh_ok(lab, "uname -r; systemd-detect-virt; systemd-detect-virt --container || true").splitlines()
    assert out[0] == vm.kernel_version()
    assert out[1] in ("qemu", "kvm")
    assert out[2] == "none"


def test_kernel_sysctl_is_writable(lab):
    # nspawn denies every kernel.* sysctl ("permission denied on key"); a VM has its own kernel.
    assert _ssh_ok(lab, "sysctl -w kernel.dmesg_restrict=1 >/dev/null && cat /proc/sys/kernel/dmesg_restrict") == "1"


def _lab_leg_answers(lab, tgt) -> None:
    for address in (tgt.lab_v4, tgt.lab_v6):
        res = lab.from_client("allowed", tcp_banner_cmd(address))
        assert res.stdout.startswith("SSH-2.0-"), f"allowed client -> {address}: {res.stdout} {res.stderr}"


def test_lab_leg_from_the_allowed_client(lab, tgt):
    _lab_leg_answers(lab, tgt)
    assert _ssh_ok(lab, "ip -br link show lab0").split()[2] == vm.lab_mac(1)
    # The tap lives in the switch namespace only, never in the controller's.
    assert subprocess.run(["ip", "link", "show", f"t{tgt.index}"], capture_output=True).returncode != 0
    sw_links = subprocess.run(["ip", "-n", network.LabNet(PREFIX).switch_ns, "-br", "link"], capture_output=True, text=True).stdout
    assert f"t{tgt.index} " in sw_links


def test_reboot_comes_back(lab, tgt):
    before = _ssh_ok(lab, "cat /proc/sys/kernel/random/boot_id")
    # Scheduled a moment later so this command answers before sshd goes down.
    _ssh_ok(lab, "systemd-run --on-active=2 systemctl reboot")
    start = time.monotonic()
    booted = None
    while time.monotonic() - start < REBOOT_WINDOW:
        # While the guest shuts down its sshd may still greet and then hang: a timeout is "not yet".
        if ssh_banner("127.0.0.1", tgt.ssh_port):
            try:
                res = lab.ssh(NAME, "cat /proc/sys/kernel/random/boot_id", user="root", timeout=60)
            except subprocess.TimeoutExpired:
                continue
            if res.returncode == 0 and res.stdout.strip() != before:
                booted = time.monotonic() - start
                break
        time.sleep(1)
    assert booted is not None, f"the VM did not come back from its reboot within {REBOOT_WINDOW}s"
    print(f"\nvm reboot to SSH: {booted:.1f}s")
    again = target.load(PREFIX, NAME)
    assert again.pids == tgt.pids and again.ssh_port == tgt.ssh_port
    assert lab_mod.is_running(again)
    assert _ssh_ok(lab, "hostname") == NAME
    _lab_leg_answers(lab, tgt)


def test_down_leaves_nothing(lab, tgt):
    pid = tgt.pids["qemu"]
    tdir = tgt.dir
    lab.down()
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

