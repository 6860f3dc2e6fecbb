"""Root commands on a lab target while the lab sets it up, before the lab's inventory and known_hosts exist.

Host keys are still checked strictly, against a known_hosts file the caller writes from the keys it gave
the target (or the golden VM's); a failure or a timeout is a LabError naming what was being done.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sandbox.errors import LabError

#: Seconds a setup command may take by default (a software-CPU guest is slow).
COMMAND_TIMEOUT = 180.0


def ssh_argv(port: int, key: Path, known_hosts: Path, alias: str | None = None) -> list[str]:
    """ssh to root on the controller's forward `port`; `alias` names the host key in `known_hosts`."""
    argv = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=60"]
    if alias:
        argv += ["-o", f"HostKeyAlias={alias}"]
    return argv + ["root@127.0.0.1"]


def run_script(argv: list[str], script: str, what: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run `script` with sh on the target (fed on stdin); its stdout."""
    try:
        proc = subprocess.run([*argv, "sh", "-s"], input=script.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: no answer over SSH after {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise LabError(f"{what} failed over SSH ({proc.returncode}):\n{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(errors="replace")
