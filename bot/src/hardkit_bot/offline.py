"""Operator commands on the ledger itself, for when no bot runs on the state directory.

`status` reads the ledger (read-only); `halt` and `reset` change the latched state in it
(the next start boots into it). The CLI calls these only while it holds `bot.lock`
(runlock.py), which proves no bot runs and keeps one from starting meanwhile: a running
bot is only ever changed through its control socket, so the kill switch never reports
a state the bot does not obey.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from .model import OrderStatus, TradingState
from .risk.epoch import epoch_meta
from .risk.state import StateMachine
from .store import Store


def status(store: Store) -> dict:
    """The ledger's view, in the same fields as the bot's `status` where they exist."""
    st, reason, since = store.get_state()
    out = {"running": False, "state": st.value, "reason": reason,
           "since": datetime.fromtimestamp(since, timezone.utc).isoformat(),
           "positions": [{"instrument": s, "qty": str(p.qty), "avg_price": str(p.avg_price)}
                         for s, p in store.positions().items() if p.qty > 0],
           "live_orders": sum(1 for r in store.live_orders() if r["status"] != OrderStatus.EXTERNAL.value),
           "note": "bot not running: read from the ledger"}
    if store.latch_doubt:
        out["latch_doubt"] = store.latch_doubt
        out["note"] += f"; the next start boots HALTED: {store.latch_doubt}"
    return out


def halt(store: Store, reason: str) -> dict:
    doubt = store.latch_doubt
    sm = StateMachine(store, time.time)   # a latch in doubt is settled HALTED (or KILLED) here
    why = f"operator halt (offline): {reason}"
    if not sm.escalate(TradingState.HALTED, why) and doubt:
        sm.restate(f"{why} (the latched state was in doubt: {doubt})")
    return {"ok": True, "state": sm.latched.value, "offline": True}


def reset(store: Store, note: str, new_day: bool, tz) -> dict:
    """A new risk epoch with no equity known: the bot takes the first equity it sees."""
    sm = StateMachine(store, time.time)
    prev = sm.reset(note or "operator (offline)", epoch_meta(time.time(), None, new_day, tz))
    return {"ok": True, "from": prev.value, "state": sm.latched.value, "offline": True}
