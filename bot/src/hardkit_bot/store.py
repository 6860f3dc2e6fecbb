"""The ledger: one SQLite file in WAL mode with synchronous=FULL.

Why SQLite: a committed transaction survives SIGKILL and power loss (FULL syncs
the WAL on every commit), it needs no server, and the stdlib ships it. Every
business change (intent, order status, fill + position, risk decision, state
change) commits in the *same* transaction as its audit record, so the ledger and
the audit chain can never disagree.

Tables: `orders` holds one row per intent, written PENDING_SUBMIT before any network
I/O and then carrying the order's life (status, exchange id, filled); `fills` (unique
trade ids make fill application idempotent), `positions`, `stops`, `equity` snapshots,
`risk_decisions` (every approval and denial), `trading_state`, `meta` (daily anchor,
equity peak, loss streak) and the hash-chained `audit` table.

One connection is shared by the engine and control threads behind an RLock
(`tx()`); the control thread never waits on the strategy, only on a statement.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from . import audit
from .model import ZERO, Fill, Intent, OrderStatus, OrderType, Position, Side, TradingState

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trading_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, reason TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT UNIQUE,
    intent_key TEXT NOT NULL UNIQUE,
    instrument TEXT NOT NULL, side TEXT NOT NULL, order_type TEXT NOT NULL,
    qty TEXT NOT NULL, ref_price TEXT NOT NULL, limit_price TEXT,
    stop_price TEXT, take_profit TEXT,
    reduce_only INTEGER NOT NULL, protective INTEGER NOT NULL, reason TEXT NOT NULL,
    status TEXT NOT NULL, exchange_order_id TEXT, filled TEXT NOT NULL DEFAULT '0', avg_price TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, sent_at REAL, last_error TEXT);
CREATE INDEX IF NOT EXISTS orders_status ON orders(status);
CREATE TABLE IF NOT EXISTS fills (
    trade_id TEXT PRIMARY KEY, client_order_id TEXT NOT NULL, instrument TEXT NOT NULL, side TEXT NOT NULL,
    qty TEXT NOT NULL, price TEXT NOT NULL, fee TEXT NOT NULL, ts REAL NOT NULL, realized_pnl TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    instrument TEXT PRIMARY KEY, qty TEXT NOT NULL, avg_price TEXT NOT NULL,
    realized_pnl TEXT NOT NULL, trip_pnl TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS stops (
    instrument TEXT PRIMARY KEY, stop_price TEXT NOT NULL, take_profit TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS equity (
    ts REAL NOT NULL, equity TEXT NOT NULL, cash TEXT NOT NULL, unrealized TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS risk_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, intent_key TEXT NOT NULL, instrument TEXT NOT NULL,
    side TEXT NOT NULL, qty TEXT NOT NULL, approved INTEGER NOT NULL, code TEXT, context TEXT NOT NULL);
""" + audit.SCHEMA

_LIVE = tuple(s.value for s in OrderStatus if s.live)


def _d(v: str | None) -> Decimal | None:
    return None if v is None else Decimal(v)


class Store:
    def __init__(self, path: str | Path, clock=time.time):
        self.path = str(path)
        self.clock = clock
        self._lock = threading.RLock()
        self.rollbacks = 0   # transactions that did not commit (see tx())
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self.conn.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            self.conn.executescript(SCHEMA)
        with self.tx():
            if self.conn.execute("SELECT 1 FROM trading_state").fetchone() is None:
                self.conn.execute("INSERT INTO trading_state VALUES (1, ?, ?, ?)",
                                  (TradingState.ACTIVE.value, "fresh ledger", self.clock()))

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One durable transaction (BEGIN IMMEDIATE ... COMMIT), serialized across threads."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self.rollbacks += 1   # book.py mirrors orders/positions in memory: it resyncs on this
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def audit(self, kind: str, payload: dict[str, Any]) -> None:
        """Append an audit record; must be called inside tx()."""
        audit.append(self.conn, self.clock(), kind, payload)

    # ---- key/value -------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any, *, audit_kind: str | None = None) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (key, json.dumps(value)))
            if audit_kind:
                self.audit(audit_kind, {key: value})

    # ---- trading state ---------------------------------------------------
    def get_state(self) -> tuple[TradingState, str, float]:
        with self._lock:
            r = self.conn.execute("SELECT state, reason, since FROM trading_state WHERE id = 1").fetchone()
        return TradingState(r[0]), r[1], r[2]

    def set_state(self, state: TradingState, reason: str, since: float, prev: TradingState) -> None:
        with self.tx() as c:
            c.execute("UPDATE trading_state SET state = ?, reason = ?, since = ? WHERE id = 1",
                      (state.value, reason, since))
            self.audit("state", {"from": prev.value, "to": state.value, "reason": reason, "since": since})

    # ---- orders ----------------------------------------------------------
    def insert_intent(self, intent: Intent, instance_id: str) -> str:
        """Persist an approved intent as PENDING_SUBMIT and return its client order id.

        The id is `<instance>-<row id>`, deterministic for the intent and unique
        forever (AUTOINCREMENT never reuses a row id).
        """
        now = self.clock()
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO orders (intent_key, instrument, side, order_type, qty, ref_price, limit_price, stop_price,"
                " take_profit, reduce_only, protective, reason, status, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (intent.key, intent.instrument, intent.side.value, intent.order_type.value, str(intent.qty),
                 str(intent.ref_price), _s(intent.limit_price), _s(intent.stop_price), _s(intent.take_profit),
                 int(intent.reduce_only), int(intent.protective), intent.reason,
                 OrderStatus.PENDING_SUBMIT.value, now, now))
            cid = f"{instance_id}-{cur.lastrowid}"
            c.execute("UPDATE orders SET client_order_id = ? WHERE id = ?", (cid, cur.lastrowid))
            self.audit("intent", {"client_order_id": cid, "key": intent.key, "instrument": intent.instrument,
                                  "side": intent.side.value, "qty": str(intent.qty), "type": intent.order_type.value,
                                  "price": _s(intent.limit_price), "reduce_only": intent.reduce_only,
                                  "protective": intent.protective, "reason": intent.reason})
        return cid

    def insert_foreign_order(self, o, status: OrderStatus, note: str) -> None:
        """Record an order found on the exchange that the ledger did not have (EXTERNAL or adopted)."""
        now = self.clock()
        cid = o.client_order_id or f"external:{o.exchange_id}"
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO orders (client_order_id, intent_key, instrument, side, order_type, qty, ref_price,"
                " limit_price, reduce_only, protective, reason, status, exchange_order_id, filled, avg_price,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,0,0,?,?,?,?,?,?,?)",
                (cid, f"{note}:{cid}", o.instrument, o.side.value, o.order_type.value, str(o.qty),
                 str(o.price or o.avg_price or 0), _s(o.price), note, status.value, o.exchange_id,
                 str(o.filled), _s(o.avg_price), now, now))
            self.audit("reconcile_" + note, {"client_order_id": cid, "exchange_order_id": o.exchange_id,
                                             "instrument": o.instrument, "status": status.value})

    def update_order(self, cid: str, status: OrderStatus, *, exchange_order_id: str | None = None,
                     error: str | None = None, sent: bool = False) -> None:
        now = self.clock()
        with self.tx() as c:
            c.execute("UPDATE orders SET status = ?, exchange_order_id = COALESCE(?, exchange_order_id),"
                      " last_error = COALESCE(?, last_error), updated_at = ?,"
                      " sent_at = CASE WHEN ? THEN ? ELSE sent_at END WHERE client_order_id = ?",
                      (status.value, exchange_order_id, error, now, int(sent), now, cid))
            self.audit("order", {"client_order_id": cid, "status": status.value,
                                 "exchange_order_id": exchange_order_id, "error": error})

    def order(self, cid: str) -> sqlite3.Row | None:
        with self._lock:
            return self.conn.execute("SELECT * FROM orders WHERE client_order_id = ?", (cid,)).fetchone()

    def live_orders(self) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(
                f"SELECT * FROM orders WHERE status IN ({','.join('?' * len(_LIVE))}) ORDER BY id", _LIVE).fetchall()

    def orders(self) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute("SELECT * FROM orders ORDER BY id").fetchall()

    def entry_plans(self) -> dict[str, tuple[Decimal, Decimal | None]]:
        """The planned stop and target of the latest entry per instrument."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT instrument, stop_price, take_profit FROM orders WHERE id IN (SELECT MAX(id) FROM orders"
                " WHERE side = 'buy' AND stop_price IS NOT NULL GROUP BY instrument)").fetchall()
        return {r[0]: (Decimal(r[1]), _d(r[2])) for r in rows}

    def entry_plan(self, instrument: str) -> tuple[Decimal, Decimal | None] | None:
        """The planned stop and target of the latest entry on `instrument`, read newest first
        (stops at the first match instead of scanning the history)."""
        with self._lock:
            r = self.conn.execute("SELECT stop_price, take_profit FROM orders WHERE instrument = ? AND side = 'buy'"
                                  " AND stop_price IS NOT NULL ORDER BY id DESC LIMIT 1", (instrument,)).fetchone()
        return (Decimal(r[0]), _d(r[1])) if r else None

    def intent_keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.conn.execute("SELECT intent_key FROM orders")}

    def orders_touched_since(self, ts: float) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute("SELECT * FROM orders WHERE updated_at >= ? ORDER BY id", (ts,)).fetchall()

    # ---- fills and positions ---------------------------------------------
    def apply_fill(self, fill: Fill) -> Decimal | None:
        """Record a fill and update the position atomically; idempotent by trade id.

        Returns the realized PnL of the fill, or None if it was already recorded.
        Closing a round trip (position back to zero) updates the consecutive-loss
        counter in the same transaction.
        """
        now = self.clock()
        with self.tx() as c:
            if c.execute("SELECT 1 FROM fills WHERE trade_id = ?", (fill.trade_id,)).fetchone():
                return None
            pos = self._position(c, fill.instrument)
            r = c.execute("SELECT trip_pnl FROM positions WHERE instrument = ?", (fill.instrument,)).fetchone()
            trip = Decimal(r[0]) if r else ZERO
            pnl = pos.apply(fill.side, fill.qty, fill.price, fill.fee)
            trip += pnl  # buy fees sit in the cost basis, so the sell's pnl carries them
            c.execute("INSERT INTO fills VALUES (?,?,?,?,?,?,?,?,?)",
                      (fill.trade_id, fill.client_order_id, fill.instrument, fill.side.value, str(fill.qty),
                       str(fill.price), str(fill.fee), fill.ts, str(pnl)))
            closed_trip = pos.qty == ZERO and fill.side is Side.SELL
            if closed_trip:
                streak = json.loads((c.execute("SELECT value FROM meta WHERE key='consecutive_losses'").fetchone() or ["0"])[0])
                streak = streak + 1 if trip < ZERO else 0
                c.execute("INSERT INTO meta VALUES ('consecutive_losses', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                          (json.dumps(streak),))
                self.audit("round_trip", {"instrument": fill.instrument, "pnl": str(trip), "consecutive_losses": streak})
                trip = ZERO
            c.execute("INSERT INTO positions VALUES (?,?,?,?,?,?) ON CONFLICT(instrument) DO UPDATE SET"
                      " qty=excluded.qty, avg_price=excluded.avg_price, realized_pnl=excluded.realized_pnl,"
                      " trip_pnl=excluded.trip_pnl, updated_at=excluded.updated_at",
                      (fill.instrument, str(pos.qty), str(pos.avg_price), str(pos.realized_pnl), str(trip), now))
            row = c.execute("SELECT filled, avg_price FROM orders WHERE client_order_id = ?", (fill.client_order_id,)).fetchone()
            if row is not None:
                filled = Decimal(row[0]) + fill.qty
                prev_avg = _d(row[1]) or ZERO
                avg = (prev_avg * Decimal(row[0]) + fill.price * fill.qty) / filled
                c.execute("UPDATE orders SET filled = ?, avg_price = ?, updated_at = ? WHERE client_order_id = ?",
                          (str(filled), str(avg), now, fill.client_order_id))
            self.audit("fill", {"trade_id": fill.trade_id, "client_order_id": fill.client_order_id,
                                "instrument": fill.instrument, "side": fill.side.value, "qty": str(fill.qty),
                                "price": str(fill.price), "fee": str(fill.fee), "realized_pnl": str(pnl)})
        return pnl

    @staticmethod
    def _position(c: sqlite3.Connection, instrument: str) -> Position:
        r = c.execute("SELECT qty, avg_price, realized_pnl FROM positions WHERE instrument = ?", (instrument,)).fetchone()
        if r is None:
            return Position(instrument)
        return Position(instrument, Decimal(r[0]), Decimal(r[1]), Decimal(r[2]))

    def positions(self) -> dict[str, Position]:
        with self._lock:
            rows = self.conn.execute("SELECT instrument, qty, avg_price, realized_pnl FROM positions").fetchall()
        return {r[0]: Position(r[0], Decimal(r[1]), Decimal(r[2]), Decimal(r[3])) for r in rows}

    def fill_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.conn.execute("SELECT trade_id FROM fills")}

    # ---- stops -----------------------------------------------------------
    def set_stop(self, instrument: str, stop: Decimal | None, take_profit: Decimal | None = None) -> None:
        with self.tx() as c:
            if stop is None:
                c.execute("DELETE FROM stops WHERE instrument = ?", (instrument,))
            else:
                c.execute("INSERT INTO stops VALUES (?,?,?,?) ON CONFLICT(instrument) DO UPDATE SET"
                          " stop_price=excluded.stop_price, take_profit=COALESCE(excluded.take_profit, stops.take_profit),"
                          " updated_at=excluded.updated_at", (instrument, str(stop), _s(take_profit), self.clock()))
            self.audit("stop", {"instrument": instrument, "stop": _s(stop), "take_profit": _s(take_profit)})

    def stops(self) -> dict[str, tuple[Decimal, Decimal | None]]:
        with self._lock:
            rows = self.conn.execute("SELECT instrument, stop_price, take_profit FROM stops").fetchall()
        return {r[0]: (Decimal(r[1]), _d(r[2])) for r in rows}

    # ---- equity and decisions ---------------------------------------------
    def snapshot_equity(self, ts: float, equity: Decimal, cash: Decimal, unrealized: Decimal) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO equity VALUES (?,?,?,?)", (ts, str(equity), str(cash), str(unrealized)))

    def record_decision(self, intent: Intent, denial, cid: str | None = None) -> None:
        now = self.clock()
        ctx = dict(denial.context) if denial else {}
        with self.tx() as c:
            c.execute("INSERT INTO risk_decisions (ts, intent_key, instrument, side, qty, approved, code, context)"
                      " VALUES (?,?,?,?,?,?,?,?)",
                      (now, intent.key, intent.instrument, intent.side.value, str(intent.qty), int(denial is None),
                       denial.code.value if denial else None, json.dumps(ctx)))
            self.audit("risk_decision", {"key": intent.key, "approved": denial is None,
                                         "code": denial.code.value if denial else None, "context": ctx,
                                         "instrument": intent.instrument, "side": intent.side.value,
                                         "qty": str(intent.qty), "protective": intent.protective})

    def decisions(self) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute("SELECT * FROM risk_decisions ORDER BY id").fetchall()


def _s(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


def intent_from_row(r: sqlite3.Row) -> Intent:
    return Intent(key=r["intent_key"], instrument=r["instrument"], side=Side(r["side"]), qty=Decimal(r["qty"]),
                  ref_price=Decimal(r["ref_price"]), order_type=OrderType(r["order_type"]),
                  limit_price=_d(r["limit_price"]), stop_price=_d(r["stop_price"]),
                  take_profit=_d(r["take_profit"]), reduce_only=bool(r["reduce_only"]),
                  protective=bool(r["protective"]), reason=r["reason"])
