"""The nspawn tier: a Debian 12 container per target, booted with systemd as PID 1.

Each target is an overlay over the cached image (so it starts pristine and costs only its
changes), in a network namespace of its own with outbound NAT through slirp4netns (the
Debian mirror is reachable) and SSH forwarded to a loopback port of the controller.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sandbox import image, keys, network, target_cpu
from sandbox.errors import LabError
from sandbox.guest_ssh import run_script, ssh_argv
from sandbox.host import raise_inotify_limit, require_root, require_tools, run
from sandbox.ports import free_port
from sandbox.readiness import wait_for_ssh
from sandbox.target import ALT_SSH_PORTS, Target, pid_alive, stop_pid

TOOLS = ["systemd-nspawn", "slirp4netns", "ip", "unshare", "ssh-keygen"]
#: slirp4netns's fixed addresses: the guest is .100, the controller appears as .2, DNS is .3.
SLIRP_GUEST = "10.0.2.100"
BOOT_TIMEOUT = 60.0
#: How many targets `up` boots at once on this tier.
PARALLEL_BOOTS = 8
REPO_ROOT = Path(__file__).resolve().parent.parent


def check_host() -> None:
    require_root("the nspawn tier")
    require_tools(TOOLS, "the nspawn tier")
    raise_inotify_limit()


def create(prefix: str, name: str, index: int, net: network.LabNet, authorized_key: str) -> Target:
    lower = image.require_built()
    t = Target(name=name, prefix=prefix, index=index, tier="nspawn", ssh_port=free_port(),
               netns=f"{network.ns_tag()}-{name}", lab_v4="", lab_v6="")
    d = t.dir
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}", str(d / "root")])
    t.save()  # from here on, `down` can clean up whatever follows
    _personalise(t, d / "root", authorized_key)
    _start_network(t, net)
    t.save()
    _start_container(t)
    t.save()
    wait_for_ssh("127.0.0.1", t.ssh_port, BOOT_TIMEOUT, on_timeout=lambda: _boot_failure(t))
    _settle_boot(t)
    return t


#: The exit status systemd gives a unit it could not put in its cgroup (EXIT_CGROUP). On a loaded
#: machine a container's systemd sometimes loses that race at boot: seen for systemd-user-sessions,
#: which then leaves /run/nologin behind, so PAM refuses every login but root's. A VPS has no such
#: race, so the lab starts such units again before it hands the target over.
EXIT_CGROUP = 219
#: Seconds to wait for the container's boot to finish after sshd answers.
SETTLE_TIMEOUT = 300
_SETTLE_SCRIPT = f"""timeout {SETTLE_TIMEOUT} systemctl is-system-running --wait >/dev/null 2>&1
for u in $(systemctl list-units --state=failed --plain --no-legend --no-pager | awk '{{print $1}}'); do
  if [ "$(systemctl show -p ExecMainStatus --value "$u")" = {EXIT_CGROUP} ]; then
    systemctl reset-failed "$u"; systemctl start "$u" && echo "$u"
  fi
done"""


def _settle_boot(t: Target) -> None:
    """Wait for the container's boot to finish; start again the units that lost the cgroup race."""
    kh = t.dir / "known_hosts.boot"
    kh.write_text("".join(f"{t.name} {k}\n" for k in t.host_keys))
    argv = ssh_argv(t.ssh_port, keys.operator_key(), kh, alias=t.name)
    restarted = run_script(argv, _SETTLE_SCRIPT, f"{t.name}: checking its boot", timeout=SETTLE_TIMEOUT + 60).split()
    if restarted:
        with open(t.dir / "supervise.log", "a") as log:
            log.write(f"started again after losing the cgroup race at boot: {' '.join(restarted)}\n")


def _personalise(t: Target, root: Path, authorized_key: str) -> None:
    """What a provider (cloud-init) does on first boot: hostname, machine-id, host keys, root's key."""
    (root / "etc/hostname").write_text(t.name + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {t.name}\n::1 localhost ip6-localhost ip6-loopback\n"
                                     "ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n")
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    t.host_keys = keys.make_host_keys(root / "etc/ssh")
    ak = root / "root/.ssh/authorized_keys"
    ak.parent.mkdir(mode=0o700, exist_ok=True)
    ak.write_text(authorized_key.strip() + "\n")
    ak.chmod(0o600)


def _start_network(t: Target, net: network.LabNet) -> None:
    if network.netns_exists(t.netns):
        run(["ip", "netns", "del", t.netns])
    run(["ip", "netns", "add", t.netns])
    run(["ip", "-n", t.netns, "link", "set", "lo", "up"])
    sock = t.dir / "slirp.sock"
    sock.unlink(missing_ok=True)
    log = open(t.dir / "slirp.log", "ab")
    proc = subprocess.Popen(
        ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
         "--api-socket", str(sock), "--netns-type=path", f"/run/netns/{t.netns}", "tap0"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    t.pids["slirp4netns"] = proc.pid
    t.save()   # before anything below can fail: `down` stops what the saved state names
    _wait_for(lambda: sock.exists(), 5.0, "slirp4netns did not start (see slirp.log)", t)
    t.forwards = {str(p): free_port() for p in ALT_SSH_PORTS}
    for guest, host_port in t.ssh_forwards().items():
        _slirp_api(sock, {"execute": "add_hostfwd", "arguments": {
            "proto": "tcp", "host_addr": "127.0.0.1", "host_port": host_port,
            "guest_addr": SLIRP_GUEST, "guest_port": guest}})
    t.lab_v4, t.lab_v6 = network.attach_target(net, t.netns, t.index)


#: Seconds to wait for slirp4netns to listen on its API socket: the socket file appears at bind, a
#: moment before listen, and a loaded machine stretches that moment (a connection was refused there).
SLIRP_API_WAIT = 5.0


def _slirp_api(sock: Path, request: dict) -> dict:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        deadline = time.monotonic() + SLIRP_API_WAIT
        while True:
            try:
                s.connect(str(sock))
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        reply = json.loads(s.recv(65536).decode() or "{}")
    if "error" in reply:
        raise LabError(f"slirp4netns refused {request['execute']}: {reply['error']}")
    return reply


def _start_container(t: Target) -> None:
    spec = {"root": str(t.dir / "root"), "name": t.name, "netns": t.netns}
    (t.dir / "nspawn.json").write_text(json.dumps(spec))
    log = open(t.dir / "supervise.log", "ab")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.supervise", str(t.dir)], cwd=str(REPO_ROOT),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    t.pids["supervisor"] = proc.pid
    t.save()


def _wait_for(cond, timeout: float, message: str, t: Target) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise LabError(f"{t.name}: {message}")


def _boot_failure(t: Target) -> str:
    console = t.dir / "console.log"
    tail = console.read_text(errors="replace").splitlines()[-20:] if console.exists() else []
    return f"{t.name} did not answer SSH on 127.0.0.1:{t.ssh_port}; console tail:\n" + "\n".join(tail)


def destroy(t: Target, net: network.LabNet) -> None:
    """Stop and remove everything this target made: container, slirp, namespace, mount, files."""
    stop_pid(t.pids.get("supervisor", 0), timeout=20.0)
    nspawn_pid_file = t.dir / "nspawn.pid"
    if nspawn_pid_file.exists():
        pid = int(nspawn_pid_file.read_text() or 0)
        if pid and pid_alive(pid):
            stop_pid(pid, timeout=10.0)
    stop_pid(t.pids.get("slirp4netns", 0), timeout=5.0)
    network.detach_target(net, t.index)
    if network.netns_exists(t.netns):
        run(["ip", "netns", "del", t.netns], check=False)
    target_cpu.untrack(t)  # a bench's CPU account of it, if any (empty now)
    root = t.dir / "root"
    if os.path.ismount(root):
        run(["umount", str(root)], check=False)
        if os.path.ismount(root):
            run(["umount", "-l", str(root)], check=False)
    shutil.rmtree(t.dir, ignore_errors=True)
