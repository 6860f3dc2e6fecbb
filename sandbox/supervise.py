"""Keeps one nspawn target running across its own reboots.

systemd-nspawn exits with status 133 when the container reboots; a real VPS comes back,
so this loop starts it again. Each start runs in a fresh time namespace whose boot and
monotonic clocks begin at zero, because pyinfra's `server.reboot` waits for the uptime to
drop. SIGTERM halts the container cleanly (nspawn forwards it as a shutdown request) and ends
the loop.

Run as: python -m sandbox.supervise TARGET_DIR  (started detached by `sandbox up`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REBOOT_EXIT = 133


def uptime_seconds() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]))


def nspawn_command(spec: dict) -> list[str]:
    up = uptime_seconds()
    return [
        "unshare", "--time", "--fork", "--kill-child", f"--boottime=-{up}", f"--monotonic=-{up}",
        "systemd-nspawn", "--quiet", "-D", spec["root"], "--boot", "--register=no", "--keep-unit",
        "-M", spec["name"], "--hostname", spec["name"],
        "--private-network", f"--network-namespace-path=/run/netns/{spec['netns']}",
        "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
    ]


def _forked_child(pid: int, timeout: float = 5.0) -> int | None:
    """The pid of systemd-nspawn, which `unshare --fork` starts as its only child."""
    deadline = time.monotonic() + timeout
    path = Path(f"/proc/{pid}/task/{pid}/children")
    while time.monotonic() < deadline:
        try:
            kids = path.read_text().split()
        except OSError:
            return None
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    return None


def main(target_dir: str) -> int:
    spec = json.loads((Path(target_dir) / "nspawn.json").read_text())
    log = open(Path(target_dir) / "console.log", "ab", buffering=0)
    child: subprocess.Popen | None = None
    stopping = False

    def on_term(signum, frame):
        # nspawn (not unshare, which would just die) turns SIGTERM into a clean halt of the container.
        nonlocal stopping
        stopping = True
        pid_file = Path(target_dir) / "nspawn.pid"
        if child and child.poll() is None and pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        log.write(f"--- hardkit lab: starting {spec['name']} at {time.ctime()}\n".encode())
        child = subprocess.Popen(nspawn_command(spec), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        nspawn_pid = _forked_child(child.pid)
        (Path(target_dir) / "nspawn.pid").write_text(str(nspawn_pid or child.pid))
        if stopping and nspawn_pid:
            os.kill(nspawn_pid, signal.SIGTERM)
        rc = child.wait()
        log.write(f"--- hardkit lab: container exited {rc}\n".encode())
        if stopping or rc != REBOOT_EXIT:
            return 0 if stopping else rc
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
