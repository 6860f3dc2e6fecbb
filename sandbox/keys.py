"""SSH keys of the lab: the operator key injected into targets, and per-target host keys.

A provider hands a VPS over with the customer's key in root's authorized_keys and fresh
host keys; the lab does the same, and records each target's host keys in a known_hosts
file so every client (pyinfra, testinfra, ssh) checks them strictly.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from sandbox.host import run
from sandbox.paths import keys_dir

#: Host key types generated per target, as Debian's openssh-server does on install.
HOST_KEY_TYPES = ("ed25519", "rsa", "ecdsa")


def operator_key() -> Path:
    """The lab operator's private key (made once); `.pub` beside it."""
    key = keys_dir() / "operator_ed25519"
    if key.exists():
        return key
    keys_dir().mkdir(parents=True, exist_ok=True)
    keys_dir().chmod(0o700)
    # Parallel test workers may all ask first: one makes it, the others wait and use it.
    with open(keys_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not key.exists():
            tmp = key.with_name(key.name + ".new")
            for old in (tmp, Path(f"{tmp}.pub")):
                old.unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hardkit-lab-operator", "-f", str(tmp)])
            os.rename(f"{tmp}.pub", f"{key}.pub")   # the public half first: the private one's existence says done
            os.rename(tmp, key)
    return key


def make_host_keys(etc_ssh: Path) -> list[str]:
    """Generate fresh host keys into `etc_ssh`; return their public lines (`type base64`)."""
    etc_ssh.mkdir(parents=True, exist_ok=True)
    publics = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in HOST_KEY_TYPES:
            path = Path(tmp) / f"ssh_host_{kind}_key"
            run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)])
            for suffix, mode in (("", 0o600), (".pub", 0o644)):
                dest = etc_ssh / (path.name + suffix)
                shutil.copyfile(str(path) + suffix, dest)
                dest.chmod(mode)
            publics.append(" ".join(Path(str(path) + ".pub").read_text().split()[:2]))
    return publics


def known_hosts_lines(hostname: str, port: int, publics: list[str]) -> list[str]:
    host = hostname if port == 22 else f"[{hostname}]:{port}"
    return [f"{host} {pub}" for pub in publics]
