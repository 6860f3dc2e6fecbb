"""The idempotent order manager: the only path from an intent to the exchange.

submit():  risk pipeline -> decision recorded -> intent persisted PENDING_SUBMIT
           (durable, client id fixed) -> ONE create call -> outcome recorded.
A create is never retried. A timeout or transport error makes the order UNKNOWN;
UNKNOWN and PENDING_SUBMIT orders are resolved by client id (`resolve`): found
-> adopt the exchange's status and fills; never acknowledged and still not found
`unknown_grace_s` after sending -> ABANDONED (it never reached the exchange). An
order the exchange once acknowledged is never abandoned: "not found" from a venue
that knew it is a glitch, so it stays UNKNOWN and keeps being asked about until
the exchange answers with a final status. A duplicate-id rejection means the
order exists: fetch it. Whatever the exchange holds under our client id is
adopted only if it is the intent (instrument, side, quantity, price or trigger,
not placed before the intent existed); anything else is refused and latches
HALTED. While an instrument has an unresolved order, new entries on it are
denied (UNRESOLVED_ORDER), so an unknown outcome can never double up.

The submit lock serializes the engine thread and the control thread (halt,
flatten): once halt returns, no entry can slip out with a stale snapshot.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from . import faults
from .book import LedgerBook
from .exchange.base import (DuplicateClientOrderId, ExchangeError, ExchangeTimeout, OrderNotFound,
                            OrderRejected)
from .marketdata import MarketData
from .model import ZERO, AccountView, ExchangeOrder, Instrument, Intent, OrderStatus, OrderType, Side, TradingState
from .risk import pipeline
from .risk.limits import ActivityRate
from .risk.pipeline import Denial, RiskLimits, RiskSnapshot
from .risk.state import StateMachine
from .store import Store

log = logging.getLogger(__name__)

#: How much earlier than our intent the exchange may stamp the order under its client id
#: (clock skew between us and the venue) before that proves the order is not this intent.
CLOCK_SKEW_S = 60.0

#: How many recent orders' pre-trade timings the status keeps (p50/p99 over them).
PRETRADE_SAMPLES = 1000


@dataclass(frozen=True)
class SubmitResult:
    client_order_id: str | None
    denial: Denial | None
    status: OrderStatus | None


class OrderManager:
    def __init__(self, store: Store, exchange, sm: StateMachine, limits: RiskLimits,
                 instruments: dict[str, Instrument], instance_id: str, market: MarketData,
                 activity: ActivityRate, clock, unknown_grace_s: float = 30.0,
                 on_fill: Callable[[], None] | None = None, on_live: Callable[[], None] | None = None):
        # on_fill: new fills are in the ledger; on_live: a new live order exists (exposure)
        self.store, self.exchange, self.sm, self.limits = store, exchange, sm, limits
        self.instruments, self.instance_id, self.market = instruments, instance_id, market
        self.activity, self.clock, self.grace = activity, clock, unknown_grace_s
        self.on_fill = on_fill or (lambda: None)
        self.on_live = on_live or (lambda: None)
        self.lock = threading.RLock()
        self.known_keys = store.intent_keys()
        self.account = AccountView()
        #: False only while the ledger has no live order (set by every intent written here, cleared by a
        #: sync that found none, recomputed after reconciliation): the per-bar and order paths skip reading
        #: the live orders when it is False.
        self.has_live = bool(self.live_rows())
        self.book = LedgerBook(store, limits, self.holds)
        #: What the pre-trade path (snapshot + checks) cost the latest orders, in ns (status: `pretrade_us`).
        self.pretrade_ns: deque[int] = deque(maxlen=PRETRADE_SAMPLES)

    # ---- snapshot -----------------------------------------------------------
    def refresh_account(self) -> AccountView:
        self.account = self.exchange.balances()
        return self.account

    def equity(self, quote: str) -> tuple[Decimal, Decimal, Decimal]:
        """(equity, cash, unrealized): quote total + positions marked at the last price."""
        return self._equity(quote, self.book.state().positions, self.market.prices())

    def _equity(self, quote: str, positions, prices) -> tuple[Decimal, Decimal, Decimal]:
        cash = self.account.total(quote)
        mark = ZERO
        unreal = ZERO
        for sym, pos in positions.items():
            px = prices.get(sym, (pos.avg_price, 0))[0]
            mark += pos.qty * px
            unreal += pos.qty * (px - pos.avg_price)
        return cash + mark, cash, unreal

    def snapshot(self, quote: str) -> RiskSnapshot:
        """What the checks read: the book's state as the ledger's writes left it (book.py), marked at
        the last prices; nothing here reads the ledger or grows with history."""
        now = self.clock()
        b = self.book.state()
        prices = self.market.prices()
        mark = held = ZERO              # one pass: positions marked at the last price (or their cost without one)
        for sym, pos in b.positions.items():
            last = prices.get(sym)
            mark += pos.qty * (last[0] if last else pos.avg_price)
            if last and sym in b.held:
                held += b.held[sym] * last[0]
        exposure, equity = b.buy_notional + held, self.account.total(quote) + mark
        return RiskSnapshot(
            state=self.sm.effective, now=now, equity=equity, free_quote=self.account.free(quote),
            pending_buy_cost=b.buy_cost, positions=b.held, pending_sell_qty=b.sell_qty,
            open_instruments=b.open_instruments, exposure=exposure, last_price=prices,
            orders_last_minute=self.activity.count("orders", now), known_keys=self.known_keys,
            unresolved_instruments=b.unresolved)

    def pretrade_us(self) -> dict:
        """p50/p99 of what the pre-trade path cost the latest orders, as this process measured it."""
        s = sorted(self.pretrade_ns)
        if not s:
            return {"orders": 0}
        return {"orders": len(s), "p50": round(s[len(s) // 2] / 1000, 1), "p99": round(s[int(len(s) * 0.99)] / 1000, 1)}

    # ---- submission ---------------------------------------------------------
    def submit(self, intent: Intent, quote: str) -> SubmitResult:
        with self.lock:
            t0 = time.perf_counter_ns()
            denial = pipeline.check(intent, self.snapshot(quote), self.limits, self.instruments)
            self.pretrade_ns.append(time.perf_counter_ns() - t0)
            self.store.record_decision(intent, denial)
            if denial is not None:
                log.info("risk denied %s %s %s: %s", intent.side.value, intent.qty, intent.instrument, denial)
                return SubmitResult(None, denial, None)
            cid = self.store.insert_intent(intent, self.instance_id)
            self.has_live = True
            self.known_keys.add(intent.key)
            self.on_live()   # a live order is exposure (reboot inhibitor) from this moment
            faults.crash_point("after_intent")
            self.activity.record("orders", self.clock())
            stop = {"trigger": intent.stop_price} if intent.order_type is OrderType.STOP else {}
            try:
                eo = self.exchange.create_order(cid, intent.instrument, intent.side, intent.order_type,
                                                intent.qty, intent.limit_price, **stop)
            except ExchangeTimeout as e:
                log.warning("create %s timed out; outcome UNKNOWN, resolving by client id", cid)
                self.store.update_order(cid, OrderStatus.UNKNOWN, error=f"timeout: {e}", sent=True)
                return SubmitResult(cid, None, self.resolve(cid))
            except DuplicateClientOrderId:
                log.warning("create %s: exchange reports a duplicate client id; fetching it", cid)
                self.store.update_order(cid, OrderStatus.UNKNOWN, error="duplicate client id", sent=True)
                return SubmitResult(cid, None, self.resolve(cid))
            except OrderRejected as e:
                log.warning("create %s rejected: %s", cid, e)
                self.activity.record("rejects", self.clock())
                self.store.update_order(cid, OrderStatus.REJECTED, error=str(e), sent=True)
                return SubmitResult(cid, None, OrderStatus.REJECTED)
            except ExchangeError as e:
                log.warning("create %s failed in transport (%s); outcome UNKNOWN", cid, e)
                self.store.update_order(cid, OrderStatus.UNKNOWN, error=str(e), sent=True)
                return SubmitResult(cid, None, self.resolve(cid))
            faults.crash_point("after_send")
            log.info("order %s %s %s %s: %s (exchange id %s, filled %s)", cid, intent.side.value, intent.qty,
                     intent.instrument, eo.status.value, eo.exchange_id, eo.filled)
            row = self.store.order(cid)
            why = _mismatch(row, eo)
            if why:
                return SubmitResult(cid, None, self._refuse(cid, why))
            status = self._record(cid, eo, sent=True, row=row)   # nothing wrote the row since it was read
            faults.crash_point("after_ack")
            pulled = self._pull_fills(cid, eo)
            return SubmitResult(cid, None, status if pulled is None else pulled)

    # ---- resolution and sync ------------------------------------------------
    def resolve(self, cid: str) -> OrderStatus:
        """Find out what happened to an order by its client id. Never re-sends."""
        row = self.store.order(cid)
        try:
            eo = self.exchange.fetch_order(row["instrument"], cid)
        except OrderNotFound:
            if row["exchange_order_id"]:      # acknowledged once: not found is not an answer, keep asking
                if row["status"] != OrderStatus.UNKNOWN.value:
                    self.store.update_order(cid, OrderStatus.UNKNOWN,
                                            error="acknowledged order not found (asking again until final)")
                return OrderStatus.UNKNOWN
            since = row["sent_at"] or row["created_at"]
            if self.clock() - since >= self.grace:
                self.store.update_order(cid, OrderStatus.ABANDONED,
                                        error=f"not on the exchange {self.grace:.0f}s after sending: never placed")
                return OrderStatus.ABANDONED
            if row["status"] != OrderStatus.UNKNOWN.value:
                self.store.update_order(cid, OrderStatus.UNKNOWN, error="not found yet")
            return OrderStatus.UNKNOWN
        except ExchangeError as e:
            log.warning("resolve %s: %s (will retry)", cid, e)
            return OrderStatus(row["status"])
        why = _mismatch(row, eo)
        if why:
            return self._refuse(cid, why)
        self._record(cid, eo)
        self._pull_fills(cid, eo)
        return OrderStatus(self.store.order(cid)["status"])

    def _refuse(self, cid: str, why: str) -> OrderStatus:
        """The exchange's order under our client id is not our intent: take none of it, stop trading."""
        reason = f"order {cid}: the exchange holds a different order under this client id ({why}); refused to adopt it"
        log.error(reason)
        self.store.update_order(cid, OrderStatus.REJECTED, error=f"refused adoption: {why}")
        self.sm.escalate(TradingState.HALTED, reason)
        return OrderStatus.REJECTED

    def sync(self, row) -> None:
        cid = row["client_order_id"]
        if row["status"] in (OrderStatus.UNKNOWN.value, OrderStatus.PENDING_SUBMIT.value):
            self.resolve(cid)
            return
        try:
            eo = self.exchange.fetch_order(row["instrument"], cid)
        except OrderNotFound:
            self.store.update_order(cid, OrderStatus.UNKNOWN, error="acknowledged order not found (asking again until final)")
            return
        except ExchangeError as e:
            log.warning("sync %s: %s", cid, e)
            return
        why = _mismatch(row, eo)
        if why:
            self._refuse(cid, why)
            return
        if eo.filled != Decimal(row["filled"]):
            self._pull_fills(cid, eo)
        self._record(cid, eo)

    def sync_all(self) -> None:
        with self.lock:
            rows = self.live_rows()
            for row in rows:
                self.sync(row)
            # no row to sync: a second read would find what the first did (order writes hold this lock)
            self.has_live = bool(self.live_rows()) if rows else False

    def _pull_fills(self, cid: str, eo: ExchangeOrder) -> OrderStatus | None:
        """Apply the exchange's trades for this order that the ledger lacks (idempotent).
        Returns the order's status in the ledger afterwards (None: nothing was pulled)."""
        if eo.filled <= 0:
            return None
        try:
            trades = self.exchange.order_trades(eo.instrument, cid, eo.exchange_id)
        except ExchangeError as e:
            log.warning("fills of %s: %s (will retry)", cid, e)
            return None
        applied = False
        for f in trades:
            if self.store.apply_fill(f, self._min_position(f.instrument)) is not None:
                applied = True
                if faults.armed("mid_fill"):   # the row is read only for the crash test's partial-fill point
                    row = self.store.order(cid)
                    if Decimal(row["filled"]) < Decimal(row["qty"]):
                        faults.crash_point("mid_fill")
        status = self._record(cid, eo)
        if applied:
            self.refresh_account_quietly()
            self.on_fill()
        return status

    def _record(self, cid: str, eo: ExchangeOrder, sent: bool = False, row=None) -> OrderStatus:
        """Store the exchange's view of an order, but never a terminal status while the
        ledger still lacks some of its fills: the order stays live (and keeps being
        synced) until every fill is in, so a crash between ack and fills loses nothing.
        `row`: the order's ledger row if the caller has just read it. Returns the status the ledger holds."""
        row = self.store.order(cid) if row is None else row
        have = Decimal(row["filled"])
        status = _ack_status(eo)
        if have < eo.filled:
            status = OrderStatus.PARTIALLY_FILLED if have > 0 else OrderStatus.OPEN
        if status.value != row["status"] or sent or row["exchange_order_id"] != eo.exchange_id:
            self.store.update_order(cid, status, exchange_order_id=eo.exchange_id, sent=sent)
        return status

    def refresh_account_quietly(self) -> None:
        try:
            self.refresh_account()
        except ExchangeError as e:
            log.warning("balances: %s", e)

    def cancel(self, cid: str) -> None:
        with self.lock:
            row = self.store.order(cid)
            try:
                eo = self.exchange.cancel_order(row["instrument"], cid)
            except OrderNotFound:
                self.resolve(cid)
                return
            self.activity.record("cancels", self.clock())
            self._pull_fills(cid, eo)
            self._record(cid, eo)

    def cancel_where(self, pred: Callable[[object], bool]) -> int:
        """Cancel our live, acknowledged orders matching pred; returns how many."""
        n = 0
        with self.lock:
            for row in self.store.live_orders():
                if row["status"] in (OrderStatus.OPEN.value, OrderStatus.PARTIALLY_FILLED.value) and pred(row):
                    try:
                        self.cancel(row["client_order_id"])
                        n += 1
                    except ExchangeError as e:
                        log.warning("cancel %s: %s", row["client_order_id"], e)
        return n

    def live_rows(self) -> list:
        return [r for r in self.store.live_orders() if r["status"] != OrderStatus.EXTERNAL.value]

    def _min_position(self, symbol: str) -> Decimal:
        inst = self.instruments.get(symbol)
        return max(inst.min_qty, inst.step_size) if inst else ZERO

    def holds(self, symbol: str, qty: Decimal) -> bool:
        """A position, not dust (see Instrument.holds)."""
        inst = self.instruments.get(symbol)
        return inst.holds(qty) if inst else qty > 0


def _mismatch(row, eo: ExchangeOrder) -> str | None:
    """Why the exchange's order `eo` is not the intent in ledger row `row` (None: it is).

    Once the ledger holds the exchange id of an order, that order has been vetted."""
    if row["exchange_order_id"] is not None and row["exchange_order_id"] == eo.exchange_id:
        return None
    diffs = []
    if eo.instrument != row["instrument"]:
        diffs.append(f"instrument {eo.instrument} != {row['instrument']}")
    if eo.side.value != row["side"]:
        diffs.append(f"side {eo.side.value} != {row['side']}")
    if eo.qty != Decimal(row["qty"]):
        diffs.append(f"qty {eo.qty} != {row['qty']}")
    if row["limit_price"] is not None and eo.price is not None and eo.price != Decimal(row["limit_price"]):
        diffs.append(f"price {eo.price} != {row['limit_price']}")
    if row["order_type"] == OrderType.STOP.value and eo.trigger is not None and row["stop_price"] is not None \
            and eo.trigger != Decimal(row["stop_price"]):
        diffs.append(f"trigger {eo.trigger} != {row['stop_price']}")
    if eo.ts and eo.ts < row["created_at"] - CLOCK_SKEW_S:
        diffs.append(f"placed {row['created_at'] - eo.ts:.0f}s before the intent existed")
    return "; ".join(diffs) or None


def _ack_status(eo: ExchangeOrder) -> OrderStatus:
    if eo.status is OrderStatus.OPEN and eo.filled > 0:
        return OrderStatus.PARTIALLY_FILLED
    return eo.status

