"""Checks and helpers about the controller machine the lab runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from sandbox.errors import LabError

#: Inotify instances root may hold (Debian's default is 128). Containers share root's per-user limit
#: on the controller: each booted target's systemd, journald, logind and udev take some, so a dozen
#: labs side by side (a parallel test run, a fleet bench) exhaust 128 and the next target's PID 1
#: fails with "Too many open files". The lab raises the limit to this, never lowers it.
INOTIFY_MIN_INSTANCES = 1024
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")

#: Debian packages that provide each host tool the lab needs, for the error message.
TOOL_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "slirp4netns": "slirp4netns",
    "ip": "iproute2",
    "unshare": "util-linux",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "zstd": "zstd",
    "mkfs.ext4": "e2fsprogs",
}


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"{what} needs root (it creates network namespaces, mounts and containers); run it as root")


def require_tools(tools: Sequence[str], what: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
        raise LabError(
            f"{what} needs {', '.join(missing)} on this machine; install with: apt-get install -y {' '.join(pkgs)}"
        )


def run(cmd: Sequence[str], *, check: bool = True, input: bytes | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a host command; on failure raise LabError with its stderr (never a bare traceback)."""
    proc = subprocess.run(list(cmd), input=input, capture_output=True, **kw)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() if isinstance(proc.stderr, bytes) else proc.stderr
        raise LabError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return proc


def raise_inotify_limit(path: Path = INOTIFY_INSTANCES, minimum: int = INOTIFY_MIN_INSTANCES) -> int:
    """Make room for many booted containers (see INOTIFY_MIN_INSTANCES); the limit now in force."""
    current = int(path.read_text())
    if current < minimum:
        path.write_text(f"{minimum}\n")
        current = int(path.read_text())
    return current
