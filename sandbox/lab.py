"""The lab's verbs: up, down, status, ssh — over either tier.

`up` is safe to repeat: running targets are kept, missing or dead ones are (re)made, and the
inventory is rewritten. `down` removes every process, namespace, mount and file a lab made.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandbox import image, keys, lab_inventory, network
from sandbox.errors import LabError
from sandbox.paths import labs_dir
from sandbox.readiness import ssh_banner
from sandbox.target import Target, all_targets, load

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
TIERS = ("nspawn", "vm")
MAX_TARGETS = 20


def backend(tier: str):
    if tier == "nspawn":
        from sandbox import nspawn
        return nspawn
    if tier == "vm":
        from sandbox import vm
        return vm
    raise LabError(f"unknown tier {tier!r}: choose one of {', '.join(TIERS)}")


def check_prefix(prefix: str) -> None:
    # Short, because namespace and interface names are built from it.
    if not PREFIX_RE.match(prefix):
        raise LabError(f"lab name {prefix!r} must be 1-8 lowercase letters/digits, starting with a letter")


def up(count: int = 1, tier: str = "nspawn", prefix: str = "lab", log=print) -> Path:
    check_prefix(prefix)
    if not 1 <= count <= MAX_TARGETS:
        raise LabError(f"--count must be between 1 and {MAX_TARGETS}")
    be = backend(tier)
    be.check_host()
    image.require_built()  # before anything is created: a refused `up` leaves nothing behind
    net = network.LabNet(prefix)
    network.ensure_switch(net)
    pub = (Path(str(keys.operator_key()) + ".pub")).read_text()
    targets, to_make = [], []
    for index in range(1, count + 1):
        name = f"{prefix}-{index}"
        existing = load(prefix, name)
        if existing and existing.tier != tier:
            raise LabError(f"{name} exists on the {existing.tier} tier; run `hardkit sandbox down --name {prefix}` first")
        if existing and _still_running(existing):
            log(f"{name}: already running ({existing.tier}, ssh 127.0.0.1:{existing.ssh_port})")
            targets.append(existing)
            continue
        if existing:
            log(f"{name}: not running; recreating it")
            backend(existing.tier).destroy(existing, net)
        to_make.append((index, name))
    # Targets boot concurrently: most of a boot is waiting for the guest.
    with ThreadPoolExecutor(max_workers=max(1, min(len(to_make), getattr(be, "PARALLEL_BOOTS", 1)))) as pool:
        futures = [pool.submit(be.create, prefix, name, index, net, pub) for index, name in to_make]
        errors = []
        for fut in futures:
            try:
                t = fut.result()
            except LabError as e:
                errors.append(str(e))
                continue
            log(f"{t.name}: up ({tier}, ssh 127.0.0.1:{t.ssh_port}, lab {t.lab_v4} {t.lab_v6})")
            targets.append(t)
    if errors:
        raise LabError("\n".join(errors))
    # Targets beyond --count from an earlier, larger `up` stay in the inventory while they run.
    extra = [t for t in all_targets(prefix) if t.index > count and is_running(t)]
    return lab_inventory.write(prefix, sorted(targets + extra, key=lambda t: t.index), net)


#: Seconds a target whose main process lives has to greet before `up` takes it for dead and remakes
#: it: a VM on a software CPU at load took longer than 2 s, and remaking it costs minutes.
KEEP_PROOF_SECONDS = 30.0


def _still_running(t: Target) -> bool:
    """Whether `up` keeps an existing target: a dead main process says no at once; a live one gets
    KEEP_PROOF_SECONDS to greet, since a remake destroys a target that was only slow."""
    return is_running(t, banner_timeout=KEEP_PROOF_SECONDS)


def is_running(t: Target, banner_timeout: float = 2.0) -> bool:
    """The target's main process lives and sshd greets on one of its forwarded ports within `banner_timeout`
    (a software-CPU VM just after boot can take longer than the default to greet)."""
    main_role = "supervisor" if t.tier == "nspawn" else "qemu"
    # sshd may have been moved to another forwarded port (roles/ssh.py): any of them answering will do.
    return t.alive(main_role) and any(ssh_banner("127.0.0.1", p, timeout=banner_timeout) is not None
                                      for p in t.ssh_forwards().values())


def down(prefix: str | None = None, log=print) -> int:
    """Remove one lab (or all with prefix None); return how many targets were removed."""
    prefixes = [prefix] if prefix else _known_prefixes()
    removed = 0
    for pre in prefixes:
        net = network.LabNet(pre)
        for t in all_targets(pre):
            backend(t.tier).destroy(t, net)
            log(f"{t.name}: removed")
            removed += 1
        network.remove_switch(net)
        shutil.rmtree(labs_dir() / pre, ignore_errors=True)
    return removed


def _known_prefixes() -> list[str]:
    """Labs recorded under this lab folder. (Namespaces alone are not enough: another lab folder,
    e.g. a test run with its own HARDKIT_LAB_DIR, may own them.)"""
    if not labs_dir().exists():
        return []
    return sorted(p.name for p in labs_dir().iterdir() if p.is_dir())


def status() -> list[dict]:
    rows = []
    for t in all_targets():
        rows.append({"name": t.name, "tier": t.tier, "ssh": f"127.0.0.1:{t.ssh_port}",
                     "lab": f"{t.lab_v4} {t.lab_v6}", "running": is_running(t)})
    return rows


def find(name: str) -> Target:
    for t in all_targets():
        if t.name == name:
            return t
    raise LabError(f"no lab target named {name!r} (see `hardkit sandbox status`)")


def ssh_command(name: str, command: list[str], user: str = "root", port: int | None = None) -> list[str]:
    """ssh argv to a target; `port` is the controller-side port (default: the forward of guest port 22)."""
    t = find(name)
    kh = lab_inventory.known_hosts_path(t.prefix)
    return ["ssh", "-i", str(keys.operator_key()), "-p", str(port or t.ssh_port),
            "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            # Also bounds the banner exchange: a forward whose guest port is firewalled accepts and then hangs.
            "-o", "ConnectTimeout=15",
            "-o", "LogLevel=ERROR", f"{user}@127.0.0.1", *command]


def exec_ssh(name: str, command: list[str], user: str = "root", port: int | None = None) -> None:
    cmd = ssh_command(name, command, user, port)
    os.execvp(cmd[0], cmd)
