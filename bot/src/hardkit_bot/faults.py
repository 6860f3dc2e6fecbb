"""Test hooks for fault injection. Inert unless their environment variable is set.

HARDKIT_BOT_CRASH_AT=<point>   SIGKILL this process when the order path reaches
                               <point>: after_intent, after_send, after_ack, mid_fill.
HARDKIT_BOT_WEDGE_AT=strategy  once a position is open, the strategy loop blocks
                               forever (the control socket must still halt and flatten).
They exist so the crash-safety tests kill the real process at exact points of the
order lifecycle instead of guessing with timers.
"""
from __future__ import annotations

import os
import signal
import threading

CRASH_POINTS = ("after_intent", "after_send", "after_ack", "mid_fill")
_crash_at = os.environ.get("HARDKIT_BOT_CRASH_AT")
_wedge_at = os.environ.get("HARDKIT_BOT_WEDGE_AT")


def armed(name: str) -> bool:
    """True if the crash point `name` is set: lets a caller skip work done only to reach it."""
    return _crash_at == name


def crash_point(name: str) -> None:
    if _crash_at == name:
        os.kill(os.getpid(), signal.SIGKILL)


def wedge_point(name: str) -> None:
    if _wedge_at == name:
        threading.Event().wait()
