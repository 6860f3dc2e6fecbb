"""Start-up reconciliation: make the ledger agree with the exchange, or stop trading.

Order of work:
1. Every local order that could still be live (PENDING_SUBMIT, UNKNOWN, OPEN,
   PARTIALLY_FILLED) is looked up by client id; its status and any missing fills
   are applied (catching up after a crash is recovery, not a mismatch).
2. Open orders on the exchange: one the ledger has but believes final (e.g.
   ABANDONED) is synced again, never skipped; ones the ledger does not know: ours
   by prefix (the ledger was lost or restored) are adopted -> REDUCING; foreign
   ones are recorded EXTERNAL -> REDUCING (someone else trades this account).
3. Trade history: every trade of the account since the ledger's newest fill
   (for a fresh ledger: the newest trades at all) must be a fill in the ledger.
   A trade of one of our orders is pulled in (recovery); any other is recorded
   as foreign and halts: the ledger was lost, restored from an old backup or
   damaged, or someone else trades the account.
4. Balances: for every instrument the exchange's base balance must equal our
   position (to the step size). A difference is unexplained money -> HALTED.
A fresh ledger on an account that holds a position or has trade history boots
HALTED and says so: it cannot know what the bot did before.

Reconciliation only records what it finds. It never creates, re-sends or
cancels an order: an operator decides after reading the reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .exchange.base import ExchangeError
from .model import ZERO, Fill, OrderStatus, TradingState
from .orders import OrderManager

log = logging.getLogger(__name__)

#: Trades from this long before the ledger's newest fill are compared too (fills of one order
#: may be stamped by the venue slightly apart; an overlap costs nothing, a gap hides a trade).
HISTORY_OVERLAP_S = 3600.0
#: How many of the account's trades per instrument are asked for.
HISTORY_LIMIT = 500


@dataclass
class ReconcileReport:
    resolved: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    foreign_trades: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    fresh_ledger: bool = False
    state: TradingState = TradingState.ACTIVE
    reason: str = ""

    def as_dict(self) -> dict:
        return {"resolved": self.resolved, "adopted": self.adopted, "external": self.external,
                "mismatches": self.mismatches, "foreign_trades": self.foreign_trades, "recovered": self.recovered,
                "fresh_ledger": self.fresh_ledger, "state": self.state.value, "reason": self.reason}


def reconcile(om: OrderManager, instance_id: str) -> ReconcileReport:
    rep = ReconcileReport()
    store, ex = om.store, om.exchange
    rep.fresh_ledger = store.is_fresh()
    since = store.history_start()
    try:
        for row in om.live_rows():
            om.sync(row)
            rep.resolved.append(f"{row['client_order_id']}: {row['status']} -> {store.order(row['client_order_id'])['status']}")
        known = {r["client_order_id"]: r["status"] for r in store.orders()}
        for eo in ex.open_orders():
            if eo.client_order_id in known:
                if known[eo.client_order_id] in (OrderStatus.ABANDONED.value, OrderStatus.UNKNOWN.value):
                    om.sync(store.order(eo.client_order_id))   # live after all: take its status and fills
                    rep.recovered.append(eo.client_order_id)
                continue
            if eo.client_order_id and eo.client_order_id.startswith(instance_id + "-"):
                store.insert_foreign_order(eo, _status(eo), "adopted")
                om._pull_fills(eo.client_order_id, eo)
                rep.adopted.append(eo.client_order_id)
            else:
                store.insert_foreign_order(eo, OrderStatus.EXTERNAL, "external")
                rep.external.append(eo.client_order_id or eo.exchange_id)
        foreign = _foreign_trades(om, since, rep)
        account = om.refresh_account()
    except ExchangeError as e:
        rep.state, rep.reason = TradingState.HALTED, f"reconciliation could not complete: {e}"
        return _finish(om, rep)
    positions = store.positions()
    for sym, inst in om.instruments.items():
        have = positions[sym].qty if sym in positions else ZERO
        amount = account.total(inst.base)
        if abs(amount - have) >= inst.step_size:
            rep.mismatches.append(f"{inst.base}: exchange holds {amount}, ledger position {have}")
    if foreign:
        store.record_foreign_trades(foreign)
        rep.foreign_trades = [f"{t.trade_id} ({t.instrument} {t.side.value} {t.qty} @ {t.price}, order "
                              f"{t.client_order_id or t.order_id})" for t in foreign]
    held = [f"{inst.base} {account.total(inst.base)}" for inst in om.instruments.values()
            if inst.holds(account.total(inst.base))]
    _judge(rep, held)
    return _finish(om, rep)


def _judge(rep: ReconcileReport, held: list[str]) -> None:
    """The state to boot into and why, from the findings (the most severe finding wins)."""
    n = len(rep.foreign_trades)
    if rep.fresh_ledger and (held or n):
        rep.state = TradingState.HALTED
        found = ([f"holds {', '.join(held)}"] if held else []) + ([f"{n} trades the ledger does not have"] if n else [])
        rep.reason = (f"reconciliation: fresh ledger on an account with positions or history ({'; '.join(found)}): "
                      "the ledger was lost or replaced; restore it, or check the account and reset")
    elif rep.mismatches or n:
        rep.state = TradingState.HALTED
        found = ([f"balance mismatch: {'; '.join(rep.mismatches)}"] if rep.mismatches else []) + (
            [f"trades on the exchange the ledger does not have (lost, restored or damaged ledger?): "
             f"{', '.join(rep.foreign_trades[:5])}{' ...' if n > 5 else ''}"] if n else [])
        rep.reason = "reconciliation: " + "; ".join(found)
    elif rep.adopted or rep.external:
        rep.state = TradingState.REDUCING
        rep.reason = "reconciliation: " + "; ".join(
            ([f"adopted our orders unknown to the ledger: {', '.join(rep.adopted)}"] if rep.adopted else []) +
            ([f"foreign open orders on the account: {', '.join(rep.external)}"] if rep.external else []))


def _finish(om: OrderManager, rep: ReconcileReport) -> ReconcileReport:
    with om.store.tx():
        om.store.audit("reconcile", rep.as_dict())
    if rep.state is not TradingState.ACTIVE:
        log.error("%s -> booting into %s", rep.reason, rep.state.value)
        om.sm.escalate(rep.state, rep.reason)
    else:
        log.info("reconciliation clean: %d local orders resolved", len(rep.resolved))
    return rep


def _foreign_trades(om: OrderManager, since: float | None, rep: ReconcileReport) -> list[Fill]:
    """Trades of the account the ledger lacks: ours are pulled in, the rest returned."""
    store, ex = om.store, om.exchange
    start = None if since is None else since - HISTORY_OVERLAP_S
    missing = []
    for sym in om.instruments:
        have = store.fill_ids() | store.foreign_trade_ids()
        for t in ex.recent_trades(sym, start, HISTORY_LIMIT):
            if t.trade_id in have:
                continue
            row = store.order(t.client_order_id) if t.client_order_id else None
            if row is None and t.order_id:
                row = store.order_by_exchange_id(t.order_id)
            if row is not None and row["status"] != OrderStatus.EXTERNAL.value:
                om.sync(row)                      # a fill of our own order the ledger missed: recover it
                rep.recovered.append(row["client_order_id"])
                have = store.fill_ids() | store.foreign_trade_ids()
                if t.trade_id in have:
                    continue
            missing.append(t)
    return missing


def _status(eo) -> OrderStatus:
    return OrderStatus.PARTIALLY_FILLED if eo.status is OrderStatus.OPEN and eo.filled > 0 else eo.status
