"""CPU seconds a running nspawn target has used, for the benches' "where the time goes".

Every nspawn target sits in the same cgroup of this machine (`/payload`: nspawn runs each in a cgroup
namespace of its own, with no systemd on the controller to give it a unit), so that cgroup's cpu.stat
sums every container of every lab. `track` therefore puts one target's processes in a cpuacct group of
their own, `/sys/fs/cgroup/cpuacct/hardkit-lab/<target>` (the v1 cpuacct hierarchy only accounts: no
limit, and the container's own systemd does not manage it); whatever they start later stays in it, so
`usage` is the container's CPU (user + system, every process, short-lived ones included) from then on.
The lab's slirp4netns (its network, a process of the controller per target) is read apart: a VPS has
none. Not counted anywhere: nspawn itself, idle.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.target import Target

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def group(t: Target) -> Path:
    return CPUACCT / "hardkit-lab" / t.name


def _init_pid(t: Target) -> int | None:
    """The container's PID 1 as the controller sees it: systemd-nspawn's child."""
    try:
        nspawn = int((t.dir / "nspawn.pid").read_text())
        kids = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
    except (OSError, ValueError):
        return None
    return int(kids[0]) if kids else None


def _processes(pid_ns: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == pid_ns:
                    found.append(int(entry))
            except OSError:
                pass  # gone meanwhile
    return found


def track(t: Target) -> bool:
    """Move the target's processes into its own cpuacct group (idempotent); False where that cannot be done
    (no cpuacct v1 hierarchy, the container not running)."""
    init = _init_pid(t)
    if init is None or not CPUACCT.is_dir():
        return False
    g = group(t)
    try:
        g.mkdir(parents=True, exist_ok=True)
        pid_ns = os.readlink(f"/proc/{init}/ns/pid")
    except OSError:
        return False
    # Twice: a process forked during the first pass, by one not yet moved, is moved by the second.
    for _ in range(2):
        for pid in _processes(pid_ns):
            try:
                (g / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass  # exited meanwhile
    return True


def usage(t: Target) -> float | None:
    """CPU seconds of the target's processes since `track` (None: not tracked)."""
    try:
        return int((group(t) / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None


def network_usage(t: Target) -> float | None:
    """CPU seconds of the target's slirp4netns so far (user + system), None when it is not running."""
    pid = t.pids.get("slirp4netns")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def untrack(t: Target) -> None:
    """Remove the target's group (its processes back in the root group first; a gone target leaves it
    empty), and the labs' group once no target has one."""
    g = group(t)
    if not g.is_dir():
        return
    try:
        for pid in (g / "cgroup.procs").read_text().split():
            try:
                (CPUACCT / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        g.rmdir()
        g.parent.rmdir()  # the last target's: the hierarchy as it was (a group still in use stays)
    except OSError:
        pass
