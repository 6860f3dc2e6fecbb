"""The ledger's open book (positions, live orders) mirrored in memory for the risk guard.

Reading them from SQLite costs tens of µs a statement (a WAL read transaction each), and
rebuilding them after every change would put that back into the next order's pre-trade
path. Instead, temporary triggers on `orders` and `positions` hand every inserted,
updated or deleted row to this mirror as SQLite writes it — whatever code path wrote it
through the store's connection — so reading the book costs no SQL and nothing that grows
with history. A transaction that does not commit (`Store.rollbacks` moves) makes the next
read rebuild the mirror from the ledger, which stays the only truth.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal

from .model import OrderStatus, OrderType, Position, Side
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


class LedgerBook:
    def __init__(self, store: Store):
        self.store = store
        self.version = 0                     # moves on every change to the book
        self._positions: dict[str, Position] = {}
        self._live: dict[int, LiveOrder] = {}
        self._rollbacks = -1                 # forces the first read to load the ledger
        fn = f"hk_book_{next(_ids)}"
        cols = {"orders": _ORDER_COLS, "positions": _POSITION_COLS}
        with store._lock:
            store.conn.create_function(f"{fn}_orders", 9, self._order_row)
            store.conn.create_function(f"{fn}_positions", 3, self._position_row)
            for table, names in cols.items():
                new = ", ".join(f"NEW.{c.strip()}" for c in names.split(","))
                gone = ", ".join(f"OLD.{c.strip()}" if c.strip() in ("id", "instrument") else "NULL"
                                 for c in names.split(","))
                for op, row in (("INSERT", new), ("UPDATE", new), ("DELETE", gone)):
                    store.conn.execute(f"CREATE TEMP TRIGGER {fn}_{table}_{op.lower()} AFTER {op} ON main.{table}"
                                       f" BEGIN SELECT {fn}_{table}({row}); END")

    # ---- fed by SQLite as rows change (in the writer's thread, under the store's lock) ----
    def _order_row(self, oid, instrument, side, order_type, qty, filled, limit_price, ref_price, status) -> None:
        self.version += 1
        if status in _LIVE:
            self._live[oid] = LiveOrder(instrument, Side(side), OrderType(order_type), Decimal(qty) - Decimal(filled),
                                        Decimal(limit_price or ref_price), status in _UNRESOLVED)
        else:
            self._live.pop(oid, None)

    def _position_row(self, instrument, qty, avg_price) -> None:
        self.version += 1
        if qty is not None and Decimal(qty) > 0:
            self._positions[instrument] = Position(instrument, Decimal(qty), Decimal(avg_price))
        else:
            self._positions.pop(instrument, None)

    # ---- read by the risk guard ----
    def view(self) -> tuple[int, dict[str, Position], tuple[LiveOrder, ...]]:
        """(version, open positions by instrument, live orders), consistent with each other; copies."""
        with self.store._lock:
            self._resync()
            return self.version, dict(self._positions), tuple(self._live.values())

    def _resync(self) -> None:
        if self._rollbacks == self.store.rollbacks:
            return
        self._rollbacks = self.store.rollbacks
        self._positions.clear()
        self._live.clear()
        self.version += 1
        for r in self.store.conn.execute(f"SELECT {_POSITION_COLS} FROM positions"):
            self._position_row(*r)
        for r in self.store.conn.execute(f"SELECT {_ORDER_COLS} FROM orders WHERE status IN"
                                         f" ({','.join('?' * len(_LIVE))})", tuple(_LIVE)):
            self._order_row(*r)
