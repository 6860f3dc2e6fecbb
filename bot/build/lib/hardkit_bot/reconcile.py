"""Start-up reconciliation: make the ledger agree with the exchange, or stop trading.

Order of work:
1. Every local order that could still be live (PENDING_SUBMIT, UNKNOWN, OPEN,
   PARTIALLY_FILLED) is looked up by client id; its status and any missing fills
   are applied (catching up after a crash is recovery, not a mismatch).
2. Open orders on the exchange that the ledger does not know: ours by prefix
   (the ledger was lost or restored) are adopted -> REDUCING; foreign ones are
   recorded EXTERNAL -> REDUCING (someone else trades this account).
3. Balances: for every instrument the exchange's base balance must equal our
   position (to the step size). A difference is unexplained money -> HALTED.

Reconciliation only records what it finds. It never creates, re-sends or
cancels an order: an operator decides after reading the reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .exchange.base import ExchangeError
from .model import ZERO, OrderStatus, TradingState
from .orders import OrderManager

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    resolved: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    state: TradingState = TradingState.ACTIVE
    reason: str = ""

    def as_dict(self) -> dict:
        return {"resolved": self.resolved, "adopted": self.adopted, "external": self.external,
                "mismatches": self.mismatches, "state": self.state.value, "reason": self.reason}


def reconcile(om: OrderManager, instance_id: str) -> ReconcileReport:
    rep = ReconcileReport()
    store, ex = om.store, om.exchange
    try:
        for row in om.live_rows():
            om.sync(row)
            rep.resolved.append(f"{row['client_order_id']}: {row['status']} -> {store.order(row['client_order_id'])['status']}")
        known = {r["client_order_id"] for r in store.orders()}
        for eo in ex.open_orders():
            if eo.client_order_id in known:
                continue
            if eo.client_order_id and eo.client_order_id.startswith(instance_id + "-"):
                store.insert_foreign_order(eo, _status(eo), "adopted")
                om._pull_fills(eo.client_order_id, eo)
                rep.adopted.append(eo.client_order_id)
            else:
                store.insert_foreign_order(eo, OrderStatus.EXTERNAL, "external")
                rep.external.append(eo.client_order_id or eo.exchange_id)
        account = om.refresh_account()
    except ExchangeError as e:
        rep.state, rep.reason = TradingState.HALTED, f"reconciliation could not complete: {e}"
        return _finish(om, rep)
    positions = store.positions()
    for sym, inst in om.instruments.items():
        have = positions[sym].qty if sym in positions else ZERO
        held = account.total(inst.base)
        if abs(held - have) >= inst.step_size:
            rep.mismatches.append(f"{inst.base}: exchange holds {held}, ledger position {have}")
    if rep.mismatches:
        rep.state, rep.reason = TradingState.HALTED, "reconciliation: balance mismatch: " + "; ".join(rep.mismatches)
    elif rep.adopted or rep.external:
        rep.state = TradingState.REDUCING
        rep.reason = "reconciliation: " + "; ".join(
            ([f"adopted our orders unknown to the ledger: {', '.join(rep.adopted)}"] if rep.adopted else []) +
            ([f"foreign open orders on the account: {', '.join(rep.external)}"] if rep.external else []))
    return _finish(om, rep)


def _finish(om: OrderManager, rep: ReconcileReport) -> ReconcileReport:
    with om.store.tx():
        om.store.audit("reconcile", rep.as_dict())
    if rep.state is not TradingState.ACTIVE:
        log.error("%s -> booting into %s", rep.reason, rep.state.value)
        om.sm.escalate(rep.state, rep.reason)
    else:
        log.info("reconciliation clean: %d local orders resolved", len(rep.resolved))
    return rep


def _status(eo) -> OrderStatus:
    return OrderStatus.PARTIALLY_FILLED if eo.status is OrderStatus.OPEN and eo.filled > 0 else eo.status
