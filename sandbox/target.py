"""The record of one lab target, kept as JSON beside its files.

Both tiers write the same record so `status`, `ssh`, `down` and the inventory writer need
not know which tier made a target.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sandbox.paths import labs_dir


#: Guest ports the lab forwards besides 22, so an SSH port move can be tested (roles/ssh.py).
ALT_SSH_PORTS = (2222,)


@dataclass
class Target:
    name: str  # e.g. "lab-1"; also the machine name and hostname
    prefix: str  # the lab it belongs to
    index: int  # 1-based position in the lab (fixes its lab addresses)
    tier: str  # "nspawn" or "vm"
    ssh_port: int  # on 127.0.0.1
    netns: str
    lab_v4: str
    lab_v6: str
    host_keys: list[str] = field(default_factory=list)
    # guest TCP port -> controller loopback port, for guest ports besides 22 (JSON keys are strings)
    forwards: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid of what we started
    created: float = field(default_factory=time.time)

    @property
    def dir(self) -> Path:
        return target_dir(self.prefix, self.name)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "target.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.dir / "target.json")

    def ssh_forwards(self) -> dict[int, int]:
        """Every forwarded guest SSH port -> its loopback port on the controller."""
        return {22: self.ssh_port, **{int(k): v for k, v in self.forwards.items()}}

    def alive(self, role: str) -> bool:
        pid = self.pids.get(role)
        return bool(pid) and pid_alive(pid)


def target_dir(prefix: str, name: str) -> Path:
    return labs_dir() / prefix / "targets" / name


def load(prefix: str, name: str) -> Target | None:
    path = target_dir(prefix, name) / "target.json"
    if not path.exists():
        return None
    return Target(**json.loads(path.read_text()))


def all_targets(prefix: str | None = None) -> list[Target]:
    found = []
    base = labs_dir()
    if not base.exists():
        return found
    prefixes = [prefix] if prefix else sorted(p.name for p in base.iterdir() if p.is_dir())
    for pre in prefixes:
        tdir = base / pre / "targets"
        if not tdir.exists():
            continue
        for d in sorted(tdir.iterdir(), key=lambda p: p.name):
            t = load(pre, d.name)
            if t:
                found.append(t)
    return sorted(found, key=lambda t: (t.prefix, t.index))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM a process we started, wait, then SIGKILL it if it would not go."""
    if not pid or not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
