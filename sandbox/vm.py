"""The vm tier: a QEMU virtual machine per target, with the image's real Debian kernel.

There is no usable KVM on the lab's machine kind, so QEMU emulates the CPU (TCG) and a cold
boot takes 15-60 s. Targets therefore start from a saved, booted snapshot instead:

- once per image (cached under `image.image_dir()/vm/KEY`, KEY also covering this module's
  recipe and the QEMU version) the image's rootfs becomes an ext4 disk, a "golden" VM boots
  from it, and its RAM is saved with QEMU's `migrate` to a zstd file beside the disk;
- each target is a copy-on-write qcow2 overlay on the golden disk and a QEMU started with the
  very same device arguments plus `-incoming`, so it resumes the booted system in seconds;
- what a provider does on first boot is then done over SSH with a bootstrap key only the
  golden knows: clock, fresh host keys (recorded for strict known_hosts), machine-id,
  hostname, root's authorized_keys (which drops the bootstrap key) and the lab leg's address.
  A `vmgenid` device tells the restored kernel it is a new VM, so clones reseed their RNG.

Networking: NIC 1 is QEMU user networking (outbound NAT, the SSH forward on 127.0.0.1 added
through the monitor after the restore); NIC 2 is a tap on the lab bridge in the switch
namespace (see `sandbox.tap`), named `lab0` in the guest by a systemd .link file and addressed
by a systemd-networkd .network file, so both survive a guest reboot. A guest reboot resets
the machine inside the same QEMU process: the target, its port and its tap stay as they are.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from sandbox import image, keys, network, tap
from sandbox.errors import LabError
from sandbox.guest_ssh import run_script, ssh_argv
from sandbox.host import require_root, require_tools, run
from sandbox.ports import free_port
from sandbox.qmp import QMP
from sandbox.readiness import wait_for_ssh
from sandbox.target import ALT_SSH_PORTS, Target, pid_alive, stop_pid

TOOLS = ["qemu-system-x86_64", "qemu-img", "zstd", "mkfs.ext4", "ip", "ssh", "ssh-keygen"]

#: Bump when the golden VM's making changes in a way the digest below cannot see.
GOLDEN_RECIPE = "3"
MEMORY_MB = 1024
CPUS = 2
DISK_SIZE = "8G"
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
#: The same in every clone: a restored NIC keeps the MAC it was saved with. The lab NIC's
#: per-target MAC is set in the guest (see `lab_mac`, `lab_link_file`).
UPLINK_MAC = "52:54:00:12:34:56"
LAB_MAC_GOLDEN = "52:54:00:51:64:00"
LAB_NIC_PCI = "0000:00:04.0"
#: The name the golden's host keys are recorded under in its known_hosts (port-independent).
GOLDEN_ALIAS = "hardkit-vm-golden"

GOLDEN_BOOT_TIMEOUT = 600.0
RESTORE_TIMEOUT = 120.0
SSH_TIMEOUT = 90.0

LAB0_LINK = f"""# hardkit lab: the second NIC is the lab leg, named lab0 (addressed per target by 10-hardkit-lab0.network).
[Match]
Path=pci-{LAB_NIC_PCI}

[Link]
Name={network.TARGET_IFNAME}
"""


def lab_link_file(index: int) -> str:
    """The golden's .link file plus this target's own MAC (udev sets it before networkd sees the NIC)."""
    return LAB0_LINK + f"MACAddress={lab_mac(index)}\n"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_host() -> None:
    require_root("the vm tier")
    require_tools(TOOLS, "the vm tier")
    if not Path("/dev/net/tun").exists():
        raise LabError("the vm tier needs /dev/net/tun (the tun kernel module) for the lab NIC's tap")


def lab_mac(index: int) -> str:
    return f"52:54:00:51:64:{index:02x}"


# ---------------------------------------------------------------- QEMU command line


def qemu_version() -> str:
    return run(["qemu-system-x86_64", "--version"]).stdout.decode().splitlines()[0].strip()


def qemu_command(golden: Path, disk: Path, tdir: Path, tap_fd: int, incoming: Path | None = None) -> list[str]:
    """QEMU's arguments; the device part is identical for the golden VM and every clone."""
    cmd = [
        "qemu-system-x86_64", "-name", tdir.name, "-no-user-config", "-nodefaults", "-display", "none",
        "-machine", "q35", "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max",
        "-smp", str(CPUS), "-m", str(MEMORY_MB),
        "-kernel", str(golden / "vmlinuz"), "-initrd", str(golden / "initrd.img"), "-append", KERNEL_APPEND,
        "-drive", f"file={disk},if=none,id=disk0,format=qcow2,cache=unsafe",
        "-device", "virtio-blk-pci,drive=disk0,addr=0x2",
        "-netdev", "user,id=up0",
        "-device", f"virtio-net-pci,netdev=up0,mac={UPLINK_MAC},addr=0x3",
        "-netdev", f"tap,id=lab0,fd={tap_fd}",
        "-device", f"virtio-net-pci,netdev=lab0,mac={LAB_MAC_GOLDEN},addr=0x4",
        "-device", "vmgenid,guid=auto",
        "-chardev", f"file,id=con0,path={tdir / 'console.log'},append=on", "-serial", "chardev:con0",
        "-qmp", f"unix:{tdir / 'qmp.sock'},server=on,wait=off",
    ]
    if incoming:
        cmd += ["-incoming", f"exec:zstd -dc {incoming}"]
    return cmd


def _spawn_qemu(cmd: list[str], tdir: Path, tap_fd: int) -> subprocess.Popen:
    (tdir / "qmp.sock").unlink(missing_ok=True)
    with open(tdir / "qemu.log", "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(tap_fd,),
                                cwd="/", start_new_session=True)


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(none)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"


def _qemu_failure(tdir: Path, what: str) -> str:
    return (f"{what}\nqemu.log:\n{_tail(tdir / 'qemu.log', 10)}\n"
            f"console tail ({tdir / 'console.log'}):\n{_tail(tdir / 'console.log')}")


# ---------------------------------------------------------------- SSH with a given key


# ---------------------------------------------------------------- the golden VM (once per image)


def kernel_version(rootfs: Path | None = None) -> str:
    boot = (rootfs or image.require_built()) / "boot"
    found = sorted(p.name[len("vmlinuz-"):] for p in boot.glob("vmlinuz-*"))
    if not found:
        raise LabError(f"the lab image has no kernel in {boot}: it was built without linux-image-amd64")
    return found[-1]


def golden_digest() -> str:
    h = hashlib.sha256()
    for part in (GOLDEN_RECIPE, qemu_version(), DISK_SIZE, LAB0_LINK,
                 " ".join(qemu_command(Path("/G"), Path("/D"), Path("/T"), 3, Path("/I")))):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def golden_dir() -> Path:
    return image.image_dir() / "vm" / golden_digest()


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_golden(net: network.LabNet, log=_log) -> Path:
    """The golden disk and RAM snapshot for the current image, built (under a minute here) if missing."""
    final = golden_dir()
    if (final / "READY").exists():
        return final
    with _lock(final.parent / ".lock"):
        if (final / "READY").exists():
            return final
        _build_golden(final, net, log)
        for old in final.parent.iterdir():
            if old.is_dir() and old != final and not old.name.endswith(".building"):
                # Running clones keep their open backing file; new ones use the new golden.
                shutil.rmtree(old, ignore_errors=True)
    return final


def _build_golden(final: Path, net: network.LabNet, log) -> None:
    rootfs = image.require_built()
    staging = final.with_name(final.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log(f"vm tier: building the golden VM for image {image.recipe_digest()} (disk, cold boot, RAM snapshot); "
        "this takes about a minute")
    started = time.monotonic()
    try:
        kver = kernel_version(rootfs)
        shutil.copyfile(rootfs / "boot" / f"vmlinuz-{kver}", staging / "vmlinuz")
        shutil.copyfile(rootfs / "boot" / f"initrd.img-{kver}", staging / "initrd.img")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hardkit-lab-vm-bootstrap",
             "-f", str(staging / "bootstrap_ed25519")])
        publics = _make_golden_disk(rootfs, staging)
        (staging / "known_hosts").write_text("".join(f"{GOLDEN_ALIAS} {p}\n" for p in publics))
        disk_seconds = time.monotonic() - started
        boot_seconds = _boot_and_snapshot(staging, net, log)
        info = {"kernel": kver, "image": image.recipe_digest(), "qemu": qemu_version(),
                "disk_seconds": round(disk_seconds, 1), "boot_to_ssh_seconds": round(boot_seconds, 1),
                "build_seconds": round(time.monotonic() - started, 1),
                "vmstate_bytes": (staging / "golden.vmstate.zst").stat().st_size}
        (staging / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        for leftover in ("qmp.sock",):
            (staging / leftover).unlink(missing_ok=True)
        (staging / "READY").write_text(f"{time.time()}\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"vm tier: golden VM ready in {time.monotonic() - started:.0f}s: {final}")


def _make_golden_disk(rootfs: Path, staging: Path) -> list[str]:
    """The image's rootfs plus the golden's bootstrap access, as an ext4 qcow2 disk; returns its host keys."""
    tree, upper, work = staging / "tree", staging / "upper", staging / "work"
    for d in (tree, upper, work):
        d.mkdir()
    run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={rootfs},upperdir={upper},workdir={work}", str(tree)])
    try:
        publics = keys.make_host_keys(tree / "etc/ssh")
        ak = tree / "root/.ssh/authorized_keys"
        ak.parent.mkdir(mode=0o700, exist_ok=True)
        ak.write_text((staging / "bootstrap_ed25519.pub").read_text())
        ak.chmod(0o600)
        (tree / "etc/systemd/network/10-hardkit-lab0.link").write_text(LAB0_LINK)
        raw = staging / "disk.raw"
        run(["truncate", "-s", DISK_SIZE, str(raw)])
        # Inode tables and journal written now, so no guest spends emulated CPU on lazy init.
        run(["mkfs.ext4", "-q", "-F", "-L", "hardkit-root", "-E", "lazy_itable_init=0,lazy_journal_init=0",
             "-d", str(tree), str(raw)])
    finally:
        run(["umount", str(tree)], check=False)
        for d in (tree, upper, work):
            shutil.rmtree(d, ignore_errors=True)
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(staging / "golden.qcow2")])
    raw.unlink()
    return publics


def _boot_and_snapshot(staging: Path, net: network.LabNet, log) -> float:
    """Cold-boot the golden VM, let it settle, save its RAM; return the boot-to-SSH seconds."""
    tap_fd = tap.open_tap(net.switch_ns, "vmgold")
    try:
        proc = _spawn_qemu(qemu_command(staging, staging / "golden.qcow2", staging, tap_fd), staging, tap_fd)
    finally:
        os.close(tap_fd)
    try:
        with QMP.connect(staging / "qmp.sock", 30.0, alive=lambda: proc.poll() is None) as q:
            port = free_port()
            out = q.hmp(f"hostfwd_add up0 tcp:127.0.0.1:{port}-:22")
            if out.strip():
                raise LabError(f"QEMU refused the golden VM's port forward: {out.strip()}")
            log("vm tier: cold-booting the golden VM (TCG, 15-60 s)")
            boot = wait_for_ssh("127.0.0.1", port, GOLDEN_BOOT_TIMEOUT, on_timeout=lambda: _qemu_failure(
                staging, f"the golden VM did not answer SSH after {GOLDEN_BOOT_TIMEOUT:.0f}s"))
            argv = ssh_argv(port, staging / "bootstrap_ed25519", staging / "known_hosts", GOLDEN_ALIAS)
            state = run_script(argv, "systemctl is-system-running --wait || true; sync\n", "settling the golden VM")
            log(f"vm tier: golden VM booted to SSH in {boot:.0f}s, system {state.strip() or '?'}; saving its RAM")
            q.hmp(f"hostfwd_remove up0 tcp:127.0.0.1:{port}")
            time.sleep(1.0)  # let the guest see the SSH connection closed before it is frozen
            q.execute("stop")
            vmstate = staging / "golden.vmstate.zst"
            q.execute("migrate", uri=f"exec:zstd -q -T2 -3 > {vmstate}")
            deadline = time.monotonic() + 300
            while True:
                status = (q.execute("query-migrate") or {}).get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise LabError(_qemu_failure(staging, f"saving the golden VM's RAM ended {status}"))
                time.sleep(0.2)
            q.execute("quit")
        proc.wait(timeout=30)
        return boot
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid, timeout=10.0)


# ---------------------------------------------------------------- one target


def create(prefix: str, name: str, index: int, net: network.LabNet, authorized_key: str) -> Target:
    golden = ensure_golden(net)
    v4, v6 = network.target_addresses(index)
    t = Target(name=name, prefix=prefix, index=index, tier="vm", ssh_port=free_port(), netns="",
               lab_v4=v4, lab_v6=v6)
    t.dir.mkdir(parents=True, exist_ok=True)
    t.save()  # from here on, `down` can clean up whatever follows
    try:
        timings = _start_clone(t, golden, net, authorized_key)
    except BaseException:
        destroy(t, net)
        raise
    (t.dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return t


def _start_clone(t: Target, golden: Path, net: network.LabNet, authorized_key: str) -> dict:
    started = time.monotonic()
    d = t.dir
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(golden / "golden.qcow2"), "-F", "qcow2",
         str(d / "disk.qcow2")])
    port_name = f"t{t.index}"
    network.detach_target(net, t.index)  # a stale port of an earlier target with this index
    tap_fd = tap.open_tap(net.switch_ns, port_name)
    try:
        run(["ip", "-n", net.switch_ns, "link", "set", port_name, "master", "br0", "up"])
        cmd = qemu_command(golden, d / "disk.qcow2", d, tap_fd, incoming=golden / "golden.vmstate.zst")
        proc = _spawn_qemu(cmd, d, tap_fd)
    finally:
        os.close(tap_fd)
    t.pids["qemu"] = proc.pid
    t.save()
    with QMP.connect(d / "qmp.sock", 30.0, alive=lambda: proc.poll() is None) as q:
        deadline = time.monotonic() + RESTORE_TIMEOUT
        while (q.execute("query-status") or {}).get("status") != "running":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(_qemu_failure(d, f"{t.name}: restoring the golden snapshot failed"))
            if (q.execute("query-migrate") or {}).get("status") == "completed":
                # The golden was stopped before it was saved, and a restore keeps that run state.
                q.execute("cont")
            time.sleep(0.05)
        restored = time.monotonic() - started
        t.forwards = {str(p): free_port() for p in ALT_SSH_PORTS}
        for guest, host_port in t.ssh_forwards().items():
            out = q.hmp(f"hostfwd_add up0 tcp:127.0.0.1:{host_port}-:{guest}")
            if out.strip():
                raise LabError(f"{t.name}: QEMU refused the SSH port forward: {out.strip()}")
    wait_for_ssh("127.0.0.1", t.ssh_port, SSH_TIMEOUT, on_timeout=lambda: _boot_failure(t))
    first_ssh = time.monotonic() - started
    t.host_keys = _personalise(t, golden, authorized_key)
    t.save()
    for role in net.clients:  # the address may have been another target's a moment ago
        run(["ip", "-n", net.client_ns(role), "neigh", "flush", "all"], check=False)
    wait_for_ssh("127.0.0.1", t.ssh_port, SSH_TIMEOUT, on_timeout=lambda: _boot_failure(t))
    return {"restore_seconds": round(restored, 2), "bootstrap_ssh_seconds": round(first_ssh, 2),
            "clone_to_ssh_seconds": round(time.monotonic() - started, 2)}


def _host_keys_tar() -> tuple[str, list[str]]:
    """Fresh host keys as a base64 tar for /etc/ssh, and their public lines for known_hosts."""
    with tempfile.TemporaryDirectory() as tmp:
        publics = keys.make_host_keys(Path(tmp))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for f in sorted(Path(tmp).iterdir()):
                info = tar.gettarinfo(str(f), arcname=f.name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
    return base64.b64encode(buf.getvalue()).decode(), publics


def lab_network_file(t: Target) -> str:
    return f"""# hardkit lab: this target's leg on the lab bridge (static, survives reboots).
[Match]
Name={network.TARGET_IFNAME}

[Link]
RequiredForOnline=no

[Network]
Address={t.lab_v4}/{network.PREFIX_V4}
LinkLocalAddressing=ipv6
IPv6AcceptRA=no

[Address]
Address={t.lab_v6}/{network.PREFIX_V6}
DuplicateAddressDetection=none
"""


def _personalise(t: Target, golden: Path, authorized_key: str) -> list[str]:
    """What a provider does on first boot, done in the restored clone over the golden's bootstrap access."""
    keys_tar, publics = _host_keys_tar()
    seed = base64.b64encode(secrets.token_bytes(512)).decode()
    script = f"""set -eu
date -s @{time.time():.3f} >/dev/null
# Timers were scheduled from the golden's boot: restart them so they count from now, as after a
# fresh boot, instead of all firing at once (apt-daily holding apt's lock as a deploy starts).
systemctl restart $(systemctl list-units --type=timer --state=active --plain --no-legend | awk '{{print $1}}')
printf '%s' '{seed}' | base64 -d > /dev/urandom
printf '%s' '{seed}' | base64 -d | tail -c 256 > /var/lib/systemd/random-seed
chmod 600 /var/lib/systemd/random-seed
printf '%s\\n' '{t.name}' > /etc/hostname
hostname '{t.name}'
grep -q '^127.0.1.1' /etc/hosts || printf '127.0.1.1 %s\\n' '{t.name}' >> /etc/hosts
if mountpoint -q /etc/machine-id; then umount /etc/machine-id; fi
golden_id=$(cat /etc/machine-id)
printf '%s\\n' '{secrets.token_hex(16)}' > /etc/machine-id
# journald keeps its files under the machine-id it read at start: start it afresh, drop the golden's.
systemctl restart systemd-journald
if [ -n "$golden_id" ]; then rm -rf "/var/log/journal/$golden_id" "/run/log/journal/$golden_id"; fi
rm -f /etc/ssh/ssh_host_*
printf '%s' '{keys_tar}' | base64 -d | tar -xzf - -C /etc/ssh
install -d -m 700 /root/.ssh
cat > /root/.ssh/authorized_keys <<'HARDKIT_EOF'
{authorized_key.strip()}
HARDKIT_EOF
chmod 600 /root/.ssh/authorized_keys
cat > /etc/systemd/network/10-hardkit-lab0.link <<'HARDKIT_EOF'
{lab_link_file(t.index)}HARDKIT_EOF
cat > /etc/systemd/network/10-hardkit-lab0.network <<'HARDKIT_EOF'
{lab_network_file(t)}HARDKIT_EOF
# The NIC still has the golden's MAC (and its link-local address): down, this target's MAC, then up by networkd.
ip link set {network.TARGET_IFNAME} down
ip link set {network.TARGET_IFNAME} address {lab_mac(t.index)}
networkctl reload
networkctl reconfigure {network.TARGET_IFNAME}
sync
systemctl restart ssh
"""
    argv = ssh_argv(t.ssh_port, golden / "bootstrap_ed25519", golden / "known_hosts", GOLDEN_ALIAS)
    run_script(argv, script, f"{t.name}: first-boot personalisation")
    return publics


def _boot_failure(t: Target) -> str:
    return _qemu_failure(t.dir, f"{t.name} did not answer SSH on 127.0.0.1:{t.ssh_port}")


def destroy(t: Target, net: network.LabNet) -> None:
    """Stop QEMU (its tap goes with it) and remove the target's bridge port and files."""
    pid = t.pids.get("qemu", 0)
    if pid and pid_alive(pid) and _is_our_qemu(pid, t):
        stop_pid(pid, timeout=15.0)
    network.detach_target(net, t.index)
    shutil.rmtree(t.dir, ignore_errors=True)


def _is_our_qemu(pid: int, t: Target) -> bool:
    """Guard against a recycled PID: the process must be a QEMU using this target's disk."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(str(t.dir / "disk.qcow2").encode() in arg for arg in cmdline)
