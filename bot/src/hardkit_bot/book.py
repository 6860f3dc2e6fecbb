"""The ledger's open book (positions, live orders) kept in memory for the risk guard.

Reading them from SQLite costs tens of µs a statement (a WAL read transaction each),
which was most of a pre-trade decision. The ledger stays the only truth: temporary
triggers on `orders` and `positions` mark the book stale on every insert, update or
delete made through the store's connection — whatever code path wrote it — and the
next read rebuilds it from two indexed queries. Their cost depends on the open
positions and live orders, never on the length of history.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal

from .model import OrderStatus, OrderType, Position, Side
from .store import Store

_LIVE = tuple(s.value for s in OrderStatus if s.live)
_UNRESOLVED = (OrderStatus.UNKNOWN.value, OrderStatus.PENDING_SUBMIT.value)
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
        self.version = 0                     # bumps on every change to orders/positions
        self._built = -1
        self._positions: dict[str, Position] = {}
        self._live: tuple[LiveOrder, ...] = ()
        name = f"hk_book_changed_{next(_ids)}"
        with store._lock:
            store.conn.create_function(name, 0, self._changed)
            for table in ("orders", "positions"):
                for op in ("INSERT", "UPDATE", "DELETE"):
                    store.conn.execute(f"CREATE TEMP TRIGGER {name}_{table}_{op.lower()} AFTER {op} ON main.{table}"
                                       f" BEGIN SELECT {name}(); END")

    def _changed(self) -> None:
        self.version += 1

    def positions(self) -> dict[str, Position]:
        """Open positions (qty > 0) by instrument. Do not mutate."""
        self._refresh()
        return self._positions

    def live_orders(self) -> tuple[LiveOrder, ...]:
        self._refresh()
        return self._live

    def _refresh(self) -> None:
        v = self.version
        if v == self._built:
            return
        with self.store._lock:   # a change made after this read bumps `version` again: rebuilt next time
            pos = self.store.conn.execute("SELECT instrument, qty, avg_price FROM positions").fetchall()
            live = self.store.conn.execute(
                "SELECT instrument, side, order_type, qty, filled, limit_price, ref_price, status FROM orders"
                f" WHERE status IN ({','.join('?' * len(_LIVE))}) ORDER BY id", _LIVE).fetchall()
        self._positions = {r[0]: Position(r[0], Decimal(r[1]), Decimal(r[2])) for r in pos if Decimal(r[1]) > 0}
        self._live = tuple(LiveOrder(r[0], Side(r[1]), OrderType(r[2]), Decimal(r[3]) - Decimal(r[4]),
                                     Decimal(r[5] or r[6]), r[7] in _UNRESOLVED) for r in live)
        self._built = v
