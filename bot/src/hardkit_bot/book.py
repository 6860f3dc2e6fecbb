"""The ledger's open book (positions, live orders) and its risk aggregates, kept in memory.

Reading the book from SQLite costs tens of µs a statement (a WAL read transaction each),
and deriving the risk aggregates (what live buys reserve, live sells, unresolved
instruments) from it at order time put that work, on caches the fsync of the last write
had left cold, into the next order's pre-trade path. Instead, temporary triggers on
`orders` and `positions` hand every inserted, updated or deleted row to this mirror as
SQLite writes it — whatever code path wrote it through the store's connection — and the
mirror rebuilds one immutable `BookState` right there, inside the writing transaction
(before its commit). An order then reads a finished object: no SQL, no aggregation, and
nothing that grows with history (the state is a function of the open book only).
A transaction that does not commit (`Store.rollbacks` moves) makes the next read rebuild
the mirror from the ledger, which stays the only truth; `matches_ledger()` compares the
two (the engine checks it at start).
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Set
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Callable

from .model import ZERO, OrderStatus, OrderType, Position, Side
from .risk import pipeline
from .risk.pipeline import RiskLimits
from .store import Store

_LIVE = frozenset(s.value for s in OrderStatus if s.live)
_UNRESOLVED = frozenset((OrderStatus.UNKNOWN.value, OrderStatus.PENDING_SUBMIT.value))
_ORDER_COLS = "id, instrument, side, order_type, qty, filled, limit_price, ref_price, status"
_POSITION_COLS = "instrument, qty, avg_price"
_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class LiveOrder:
    """What the guard needs of one of our live orders (PENDING_SUBMIT, UNKNOWN, OPEN, PARTIALLY_FILLED)."""
    instrument: str
    side: Side
    order_type: OrderType
    remaining: Decimal
    price: Decimal            # limit price, else the reference price of the decision
    unresolved: bool          # PENDING_SUBMIT or UNKNOWN: the exchange may not show it yet


@dataclass(frozen=True, slots=True)
class BookState:
    """The open book as the risk snapshot reads it; immutable, replaced on every change."""
    positions: Mapping[str, Position]     # every open position, dust included (equity counts it)
    held: Mapping[str, Decimal]           # positions that are not dust: qty by instrument
    buy_cost: Decimal                     # quote every live buy may still consume (fee, slippage)
    buy_notional: Decimal                 # remaining qty x price of live buys: exposure
    sell_qty: Mapping[str, Decimal]       # per instrument, qty live sells will still remove
    open_instruments: Set[str]            # a held position or a live buy
    unresolved: Set[str]                  # instruments with a PENDING_SUBMIT/UNKNOWN order


def derive(positions: Mapping[str, Position], live: Mapping[int, LiveOrder], limits: RiskLimits,
           holds: Callable[[str, Decimal], bool]) -> BookState:
    """The risk aggregates of an open book (live orders in ledger row order)."""
    buy_cost = notional = ZERO
    sells: dict[str, Decimal] = {}
    buys: set[str] = set()
    for o in live.values():
        if o.side is Side.BUY:
            buy_cost += pipeline.buy_cost(o.remaining, o.price, o.order_type, limits)
            notional += o.remaining * o.price
            buys.add(o.instrument)
        else:
            sells[o.instrument] = sells.get(o.instrument, ZERO) + o.remaining
    held = {s: p.qty for s, p in positions.items() if holds(s, p.qty)}
    return BookState(MappingProxyType(dict(positions)), MappingProxyType(held), buy_cost, notional,
                     MappingProxyType(sells), frozenset(buys.union(held)),
                     frozenset(o.instrument for o in live.values() if o.unresolved))


def _live_order(instrument, side, order_type, qty, filled, limit_price, ref_price, status) -> LiveOrder:
    return LiveOrder(instrument, Side(side), OrderType(order_type), Decimal(qty) - Decimal(filled),
                     Decimal(limit_price or ref_price), status in _UNRESOLVED)


class LedgerBook:
    def __init__(self, store: Store, limits: RiskLimits, holds: Callable[[str, Decimal], bool]):
        """`holds(symbol, qty)`: a position, not dust (OrderManager.holds)."""
        self.store, self.limits, self.holds = store, limits, holds
        self._positions: dict[str, Position] = {}
        self._live: dict[int, LiveOrder] = {}
        self._state = derive({}, {}, limits, holds)
        self._rollbacks = -1                 # forces the first read to load the ledger
        #: Rebuild the state inside each write (live: the order that reads it pays nothing), or only
        #: when it is next read (a replay's ledger: five writes per order, one read; see Store).
        self._eager = store.book_rebuild_on_write
        self._stale = False                  # a row changed and the state is not rebuilt yet (lazy only)
        fn = f"hk_book_{next(_ids)}"
        cols = {"orders": _ORDER_COLS, "positions": _POSITION_COLS}
        with store._lock:
            store.conn.create_function(f"{fn}_orders", 9, self._order_row if self._eager else self._order_row_lazy)
            store.conn.create_function(f"{fn}_positions", 3, self._position_row)
            for table, names in cols.items():
                new = ", ".join(f"NEW.{c.strip()}" for c in names.split(","))
                gone = ", ".join(f"OLD.{c.strip()}" if c.strip() in ("id", "instrument") else "NULL"
                                 for c in names.split(","))
                # an UPDATE fires only when it sets a column the book reads: setting the client id after
                # the insert, the exchange id or an error cannot change the book and rebuilds nothing
                watched = "UPDATE OF " + ", ".join(c.strip() for c in names.split(",") if c.strip() != "id")
                for op, row in (("INSERT", new), (watched, new), ("DELETE", gone)):
                    store.conn.execute(f"CREATE TEMP TRIGGER {fn}_{table}_{op.split()[0].lower()} AFTER {op}"
                                       f" ON main.{table} BEGIN SELECT {fn}_{table}({row}); END")
            if store.row_listeners is not None:        # rows kept in memory until the ledger's commit
                store.row_listeners["orders"].append(self._order_row if self._eager else self._order_row_lazy)
                store.row_listeners["positions"].append(self._position_row)

    # ---- fed by SQLite as rows change (in the writer's thread, under the store's lock) ----
    def _order_row(self, *row) -> None:
        if self._put_order(*row):
            self._changed()

    def _order_row_lazy(self, oid, *row) -> None:
        """A replay's ledger: the row is kept as SQLite handed it and made a LiveOrder when the state is
        next read (an order's ~4 writes between two reads convert it once, or never if it closed)."""
        if row[7] in _LIVE:                             # status
            self._live[oid] = row
            self._stale = True
        elif self._live.pop(oid, None) is not None:
            self._stale = True

    def _position_row(self, *row) -> None:
        self._put_position(*row)
        self._changed()

    def _changed(self) -> None:
        if self._eager:
            self._state = derive(self._positions, self._live, self.limits, self.holds)
        else:
            self._stale = True

    def _put_order(self, oid, instrument, side, order_type, qty, filled, limit_price, ref_price, status) -> bool:
        if status in _LIVE:
            self._live[oid] = _live_order(instrument, side, order_type, qty, filled, limit_price, ref_price, status)
            return True
        return self._live.pop(oid, None) is not None   # a closed order that changed leaves the book as it is

    def _put_position(self, instrument, qty, avg_price) -> None:
        if qty is not None and Decimal(qty) > 0:
            self._positions[instrument] = Position(instrument, Decimal(qty), Decimal(avg_price))
        else:
            self._positions.pop(instrument, None)

    # ---- read by the risk guard ----
    def state(self) -> BookState:
        """The committed open book and its aggregates (an immutable object: share it freely)."""
        with self.store._lock:
            if self._rollbacks != self.store.rollbacks:
                self._resync()
            elif self._stale:
                live = self._live
                for oid, o in live.items():             # rows the lazy trigger kept (same keys, same order)
                    if type(o) is tuple:
                        live[oid] = _live_order(*o)
                self._state = derive(self._positions, live, self.limits, self.holds)
                self._stale = False
            return self._state

    def matches_ledger(self) -> bool:
        """True if the mirror equals the book read afresh from the ledger (the start-up check)."""
        with self.store._lock:
            mirror = self.state()
            self._state = self._load()
            return mirror == self._state

    def _resync(self) -> None:
        self._rollbacks = self.store.rollbacks
        self._state = self._load()
        self._stale = False

    def _load(self) -> BookState:
        """Read the open book from the ledger into the mirror (through the same row handlers)."""
        self.store.to_sql()
        self._positions.clear()
        self._live.clear()
        for r in self.store.conn.execute(f"SELECT {_POSITION_COLS} FROM positions"):
            self._put_position(*r)
        for r in self.store.conn.execute(f"SELECT {_ORDER_COLS} FROM orders WHERE status IN"
                                         f" ({','.join('?' * len(_LIVE))}) ORDER BY id", tuple(_LIVE)):
            self._put_order(*r)
        return derive(self._positions, self._live, self.limits, self.holds)
