"""Waiting for a target to answer SSH: a real SSH banner, not just an open port.

A port forward (slirp4netns, QEMU user networking) accepts TCP before the guest's sshd is up,
so an open port proves nothing; the `SSH-2.0-` banner does.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from sandbox.errors import LabError


def ssh_banner(host: str, port: int, timeout: float = 2.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = s.recv(256)
    except OSError:
        return None
    text = data.decode(errors="replace")
    return text.strip() if text.startswith("SSH-") else None


def wait_for_ssh(host: str, port: int, timeout: float, on_timeout: Callable[[], str] | None = None) -> float:
    """Block until SSH answers; return the seconds it took. Raise LabError with context on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ssh_banner(host, port, timeout=min(3.0, timeout)):
            return time.monotonic() - start
        time.sleep(0.1)
    raise LabError(on_timeout() if on_timeout else f"no SSH on {host}:{port} after {timeout:.0f}s")
