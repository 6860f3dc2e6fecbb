"""Helpers for the OS-baseline integration tests: an inventory with overrides, a lab-local NTP
server, reboots, and root commands through the admin's sudo.

Lab traffic stays inside the lab: targets are pointed at an NTP responder that runs in the lab's
allowed-client namespace, never at a public pool.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

from tests.integration.labkit import Lab, boot

#: Why a control may be skipped on a lab host (words of the checks' skip reasons): shown on the other
#: tier, needs a boot loader, applies only with the bot on (resp. off) while this host has it off (on),
#: or only to second-factor admins, whom the lab's inventory does not list; rkhunter's verdict before its
#: first scheduled scan (tests/compliance/test_integrity.py); the container-only kernel image control
#: (hk-os-kern-05) on a host not declared a container.
EXPECTED_SKIPS = ("vm tier", "boot loader", "bot_enabled is", "second_factor_admins", "admin in the inventory",
                  "no rkhunter scan has finished", "backup_to is not set", "backup_server is not true",
                  "integrity_enabled is false", "not declared a container")
NTP_PORT = 123
#: Seconds between 1900-01-01 (NTP epoch) and 1970-01-01.
NTP_EPOCH_OFFSET = 2208988800


def derived_inventory(lab: Lab, folder: Path, **overrides) -> Path:
    """A copy of the lab's inventory with `overrides` added to every host's data."""
    path = folder / f"{lab.prefix}-inventory.py"
    path.write_text(
        f'"""{lab.prefix} lab inventory with test overrides."""\n'
        f"_base = {{}}\n"
        f"exec(open({str(lab.inventory_path)!r}).read(), _base)\n"
        f"_overrides = {overrides!r}\n"
        f"sandbox = [(_n, {{**_d, **_overrides}}) for _n, _d in _base['sandbox']]\n")
    return path


def sntp_reply(request: bytes, now: float) -> bytes:
    """A stratum-2 SNTP server reply to a client request (RFC 4330)."""
    def ts(t: float) -> int:
        secs = int(t) + NTP_EPOCH_OFFSET
        return (secs << 32) | int((t % 1) * (1 << 32))
    client_transmit = request[40:48]
    header = struct.pack("!BBbb", (0 << 6) | (4 << 3) | 4, 2, 4, -20)
    root = struct.pack("!II", 0, 1 << 10)  # root delay 0, dispersion ~16 ms
    ref_id = b"LAB\0"
    stamps = struct.pack("!Q", ts(now - 1)) + client_transmit + struct.pack("!QQ", ts(now), ts(time.time()))
    return header + root + ref_id + stamps


def serve_sntp(address: str) -> None:
    """Answer SNTP requests on address:123 until killed (run inside the client's namespace)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, NTP_PORT))
    while True:
        data, peer = sock.recvfrom(512)
        if len(data) >= 48:
            sock.sendto(sntp_reply(data, time.time()), peer)


class LabNtp:
    """An SNTP responder in the lab's allowed-client namespace (started by this process, stopped by PID)."""

    def __init__(self, lab: Lab):
        client = lab.host_data(lab.names[0])["lab"]["clients"]["allowed"]
        self.netns, self.address = client["netns"], client["v4"]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LabNtp":
        repo = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c",
             f"import sys; sys.path.insert(0, {str(repo)!r}); "
             f"from tests.integration.oslab import serve_sntp; serve_sntp({self.address!r})"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def ssh(lab: Lab, name: str, command: str, user: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """SSH to one of this lab's targets (looked up in this lab only, whatever other labs hold)."""
    from sandbox import keys, lab_inventory
    from sandbox.target import load

    t = load(lab.prefix, name)
    cmd = ["ssh", "-i", str(keys.operator_key()), "-p", str(t.ssh_port),
           "-o", f"UserKnownHostsFile={lab_inventory.known_hosts_path(lab.prefix)}", "-o", "StrictHostKeyChecking=yes",
           "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", f"{user}@127.0.0.1", command]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def root(lab: Lab, name: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command as root through the admin's `sudo -n` (root cannot log in after the deploy)."""
    admin = lab.host_data(name)["admin_user"]
    res = ssh(lab, name, "sudo -n sh -c " + _quote(command), user=admin, timeout=timeout)
    if res.returncode == 255 and "Permission denied" in res.stderr:  # before the admin exists
        res = ssh(lab, name, command, user="root", timeout=timeout)
    return res


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def boot_id(lab: Lab, name: str) -> str:
    return root(lab, name, "cat /proc/sys/kernel/random/boot_id").stdout.strip()


def wait_for_new_boot(lab: Lab, name: str, old: str, timeout: float = 600) -> str:
    """Wait until the target answers SSH with another boot id than `old`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            new = boot_id(lab, name)
        except subprocess.TimeoutExpired:
            new = ""
        if new and new != old:
            return new
        time.sleep(2)
    raise AssertionError(f"{name} did not come back from a reboot within {timeout:.0f} s")


def reboot(lab: Lab, name: str, timeout: float = 600) -> None:
    old = boot_id(lab, name)
    root(lab, name, "systemd-run --on-active=2 systemctl reboot")
    wait_for_new_boot(lab, name, old, timeout)


#: The @deploy names of the OS-baseline roles (operation names start with them).
OS_DEPLOYS = ("Automatic security updates and the reboot guard", "Kernel and sysctl", "Accounts and login",
              "Filesystem and packages", "auditd", "Time and logs")


def os_changes(result) -> dict[str, list[str]]:
    """Operations of the OS roles that changed something (other roles are checked by their own tests)."""
    others = {n: [op for op in h.changed if not op.startswith(OS_DEPLOYS)] for n, h in result.hosts.items()}
    if any(others.values()):
        warnings.warn(f"operations of other roles changed on a repeated deploy: {others}")
    return {n: [op for op in h.changed if op.startswith(OS_DEPLOYS)] for n, h in result.hosts.items()
            if any(op.startswith(OS_DEPLOYS) for op in h.changed)}


def os_lab(prefix: str, tier: str, folder, **overrides):
    """A booted one-target lab whose inventory points NTP at a responder inside the lab (plus `overrides`)."""
    handle = boot(prefix, count=1, tier=tier)
    try:
        with LabNtp(handle) as ntp:
            handle.ntp_address = ntp.address
            handle.os_overrides = {"ntp_servers": [ntp.address], **overrides}
            handle.os_inventory = derived_inventory(handle, folder, **handle.os_overrides)
            handle.os_folder = folder
            yield handle
    finally:
        handle.down()


def deploy_ok(handle):
    result = handle.deploy(inventory_path=handle.os_inventory)
    assert result.ok, {n: (h.failed, h.error) for n, h in result.hosts.items()}
    return result


def verify(lab, *args: str):
    from tests.integration.labkit import hardkit

    return hardkit("verify", str(lab.os_inventory), *args)
