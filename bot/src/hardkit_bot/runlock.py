"""The single-instance lock: `bot.lock` in the state directory, held with flock(2) by `run`.

It is also the proof an operator command needs before it may change the latched state
in the ledger directly: the lock can be taken only when no bot runs on that state
directory, and the command keeps it while it writes, so no bot starts meanwhile.
"""
from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

NAME = "bot.lock"


def try_lock(state_dir: Path) -> IO | None:
    """The locked file (keep it open to keep the lock), or None when a bot holds it.

    Raises OSError when the file cannot be opened at all (e.g. no permission): then
    nothing is proven either way.
    """
    f = open(state_dir / NAME, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f
