"""The venue's dead-man's switch, armed for entry orders only.

Why: an entry (a market buy) can rest on the venue unfilled (a slow or halted market,
or an outcome the bot has not learnt yet: UNKNOWN). If the bot dies then, the entry
may fill later into a market nobody watches. A venue's dead-man's switch (ccxt
`cancelAllOrdersAfter`) cancels it unless the bot keeps refreshing the switch.

But the switch cancels *every* open order of the account, the resting protective stops
(`resting_stops.py`) included. Protection wins:
- armed only while a live entry exists and every other live order of ours is an entry
  too: no protective stop, no exit. (A foreign order on the account would be cancelled
  as well: reconciliation finds it and entries stop, REDUCING; the bot wants its account
  to itself.) "Live" starts when the
  intent is persisted, before the create call (OrderManager's `on_live`), and ends when
  the order is final, so an UNKNOWN entry keeps it armed;
- refreshed every engine iteration, `exchange.dead_man_timeout_s` ahead;
- disarmed as soon as no entry is live or anything else goes live; for a stop that is
  when its intent is persisted, before it is sent.
Which orders survive a dead bot:
- entries and nothing else: the switch fires after the timeout and cancels them;
- a position with its resting stop (with or without an entry elsewhere): the switch is
  not armed, the stop survives and fires on a drop. An entry left resting then is
  cancelled at the next start if it has rested longer than the timeout
  (`cancel_stale_entries`); should it fill while the bot is down, reconciliation takes
  the fill in and the next iteration places its stop.
A failed switch call is logged and retried next iteration; it never blocks an order
(a stop is placed even if its disarm failed: the switch then fires at most one timeout
later, unless a retry disarms it first).
"""
from __future__ import annotations

import logging

from .exchange.base import ExchangeError
from .model import OrderStatus, Side

log = logging.getLogger(__name__)

#: What `OrderManager.cancel_where` cancels: acknowledged orders (an unresolved one is resolved first).
_CANCELLABLE = (OrderStatus.OPEN.value, OrderStatus.PARTIALLY_FILLED.value)


def is_entry(row) -> bool:
    """An order of ours that opens or adds to a position (a buy that is neither protective nor reduce-only)."""
    return row["side"] == Side.BUY.value and not row["protective"] and not row["reduce_only"]


def wants_switch(live_rows) -> bool:
    """The arming rule: some live order, and every live order is an entry."""
    return bool(live_rows) and all(is_entry(r) for r in live_rows)


class DeadMansSwitch:
    def __init__(self, exchange, timeout_s: float):
        self.exchange, self.timeout_s = exchange, timeout_s
        self.armed: bool | None = None      # None: unknown (a previous process, or a failed call, may have armed it)

    def update(self, live_rows) -> None:
        """Arm/refresh or disarm the switch for our live orders (ledger rows)."""
        want = wants_switch(live_rows)
        if not want and self.armed is False:
            return
        try:
            self.exchange.cancel_all_after(self.timeout_s if want else 0)
        except ExchangeError as e:
            log.warning("dead-man's switch: %s (will retry)", e)
            self.armed = None
            return
        if want is not self.armed:
            log.info("dead-man's switch %s", f"armed ({self.timeout_s:g} s) for resting entries" if want else "disarmed")
        self.armed = want


def cancel_stale_entries(om, timeout_s: float) -> int:
    """At start: cancel the entries a previous process left resting for longer than the switch's
    timeout, as an armed switch would have (their signal is stale). Younger ones (a quick restart)
    are kept and covered by the switch from now on. Returns how many were cancelled."""
    now = om.clock()

    def stale(r) -> bool:
        return is_entry(r) and now - (r["sent_at"] or r["created_at"]) >= timeout_s

    found = [r["client_order_id"] for r in om.live_rows() if r["status"] in _CANCELLABLE and stale(r)]
    if not found:
        return 0
    n = om.cancel_where(stale)
    log.warning("cancelled %d entries left resting by the previous run for over %g s: %s", n, timeout_s,
                ", ".join(found))
    with om.store.tx():
        om.store.audit("stale_entries_cancelled", {"orders": found, "cancelled": n})
    return n
