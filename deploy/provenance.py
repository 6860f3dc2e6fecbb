"""Where a deploy comes from: the repository commit (and whether the tree was dirty), who ran it, when.

Computed once per run on the controller and handed to every host's deploy record
(roles/record.py). A dirty tree is allowed; the record says so. Outside a git checkout the
commit is None.
"""

from __future__ import annotations

import getpass
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def run_facts() -> dict:
    """{"commit", "dirty", "operator", "started"} for this run."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=normal")
    return {"commit": commit, "dirty": bool(status and status.strip()) if commit else None,
            "operator": f"{getpass.getuser()}@{socket.gethostname()}",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
