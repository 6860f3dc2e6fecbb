"""Checks and helpers about the controller machine the lab runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from sandbox.errors import LabError

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
