"""Backtest / replay: historical bars through the live engine, risk guard and paper exchange.

Nothing is re-implemented for the backtest: the Engine, OrderManager, risk
pipeline, breakers and PaperExchange's market rules (in manual mode, fed bar by
bar) are the production objects; the ledger and the paper account live in memory
(`ReplayLedger` below, `exchange/paper_replay.py`). The clock
is the bar clock, so daily-loss anchoring and stale-data checks behave as live.
"""
from __future__ import annotations

import hashlib
import sqlite3
import time
from functools import partial
from itertools import groupby
from operator import getitem, itemgetter
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from . import audit
from .config import Config
from .engine import Engine
from .exchange.paper import PaperExchange
from .exchange.paper_replay import ReplayPaperExchange
from .model import ZERO, Bar, Position
from .book import _ORDER_COLS
from .store import _INTENT_COLS, _LIVE, LOSS_STREAK, Store, _client_id


def _flushed_first(read):
    """A Store read through a ReplayLedger: the batch's queued rows and records are written first."""
    def flushed(self, *args):
        with self._lock:
            self._flush()
            return read(self, *args)
    flushed.__name__, flushed.__doc__ = read.__name__, read.__doc__
    return flushed


_UNREAD, _ABSENT = object(), object()   # ReplayLedger's loss streak: not read yet / no such key
_SCALARS = frozenset((str, int, float, bool, type(None)))   # what an audit payload may hold to be encoded later


class _OrderRow(tuple):
    """An `orders` row held by a ReplayLedger: read by index or by column name, as a sqlite3.Row."""
    __slots__ = ()
    _idx: dict = {}

    def __getitem__(self, k):
        return tuple.__getitem__(self, self._idx[k] if k.__class__ is str else k)

    def keys(self) -> list[str]:
        return list(self._idx)


def _default(sql: str | None):
    """A column's DEFAULT (PRAGMA table_info's text) as SQLite would store it: NULL or a quoted text."""
    if sql is None:
        return None
    if len(sql) >= 2 and sql[0] == sql[-1] == "'":
        return sql[1:-1].replace("''", "'")
    raise ValueError(f"orders column default {sql!r} is not handled by the replay ledger")


def _copy_of_scalars(payload: dict) -> dict | None:
    """A copy of `payload` if it holds only scalars or dicts of scalars (nothing a caller could change
    in the copy), else None."""
    copy = payload.copy()
    for k, v in copy.items():
        t = type(v)
        if t is dict:
            for x in v.values():
                if type(x) not in _SCALARS:
                    return None
            copy[k] = v.copy()
        elif t not in _SCALARS:
            return None
    return copy


class ReplayLedger(Store):
    """The ledger for replays: every `tx()` joins one open transaction instead of
    committing on its own.

    A live ledger commits (and fsyncs) each change before the bot acts on it; a replay
    has nothing to survive: its ledger is in memory (or a scratch file) and a failure
    aborts the replay. The same rows, audit records and hash chain are written, with these
    differences, all of them only here (`Store`, the live ledger, has none of them):

    - no BEGIN/COMMIT pair per change: `commit()` ends the batch (and starts the next one),
      `close()` commits the last; synchronous=OFF;
    - the chain's head is kept in memory instead of read back per record;
    - the audit records of a batch are encoded as they are made but chained (hashed, each
      linking to the one before) and inserted together, in order, with one `executemany`, just
      before the batch commits, in the same transaction; so are the rows of the two tables the
      bot never reads back while it runs (`Store._write_behind`: risk decisions, stops), each
      statement in the order it was made: a crash mid-batch loses the batch's changes and its
      records alike, and leaves the ledger as the last commit left it (chain intact).

    - the orders, fills, positions and loss streak it writes are kept in memory too, as the rows
      Store writes, and the order path reads them there (an order, the live orders, an entry's plan,
      a position, whether a fill is known, the streak); they go into their tables at the batch's commit
      (orders upserted, the rest queued as above), and the book mirror is told of each change as its
      triggers would have been;
    - an audit payload of scalars is encoded at the commit (from a copy), not when recorded.

    Anything that reads those tables through this object (`audit_head`, `verify_audit`, `stops`,
    `decisions`, `orders`, `fill_ids`, ...) or the book's reload (`to_sql`) sees the pending rows first.
    The order book mirror (`book.py`) rebuilds its risk aggregates when an order next reads them, not
    inside each of the ~5 writes an order makes (the same pure function of the same rows, so the same
    state). Never use this class for a live bot.
    """

    book_rebuild_on_write = False

    def __init__(self, path: str | Path = ":memory:", clock=time.time):
        super().__init__(path, clock)
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("BEGIN IMMEDIATE")
        self._head: tuple[int, str] | None = None   # the audit chain's head, once read (_flush())
        self._pending: list[tuple[float, str, str | dict]] = []   # this batch's records (ts, kind, text or payload
        #                                                            of scalars), not yet encoded/chained
        self._later: list[tuple[str, tuple]] = []          # this batch's write-behind statements, in order
        self.row_listeners = {"orders": [], "positions": []}
        self._batching = True

    def tx(self):
        """Join the open batch (under the lock); a plain object, not a generator: ~15 a fill."""
        if not getattr(self, "_batching", False):   # Store.__init__'s own first transaction
            return super().tx()
        return _Joined(self)

    def audit(self, kind: str, payload: dict) -> None:
        """Chained at the batch's commit. A payload of scalars (str, int, float, bool, None, or a dict
        of them: every record an order writes) is copied now and encoded at the commit with the batch's
        other records, one after the other (nothing can change what the copy holds; the same encoder,
        so the same text); any other payload is encoded now, as it is at this moment."""
        if not getattr(self, "_batching", False):
            return super().audit(kind, payload)
        kept = _copy_of_scalars(payload)
        self._pending.append((self.clock(), kind, audit.encode(payload) if kept is None else kept))

    def _write_behind(self, sql: str, params: tuple) -> None:
        if not getattr(self, "_batching", False):
            return super()._write_behind(sql, params)
        self._later.append((sql, params))

    def _flush(self) -> None:
        """Write the batch's queued rows, then chain and insert its audit records (the caller holds the
        lock, inside the batch's transaction). The chain's head is kept in memory, not read back per
        record: nothing else writes this ledger while it batches (the live Store reads it, as another
        process may append)."""
        self._orders_to_sql()
        for sql, run in groupby(self._later, key=itemgetter(0)):
            self.conn.executemany(sql, [params for _, params in run])
        self._later.clear()
        if self._pending:
            head = audit.head(self.conn) if self._head is None else self._head
            rows = []
            encode = audit.encode
            for ts, kind, text in self._pending:
                if type(text) is dict:
                    text = encode(text)
                rows.append(audit.link(head, ts, kind, text, self._key))
                head = rows[-1][0], rows[-1][5]
            audit.insert_rows(self.conn, rows)
            self._head = head
            self._pending.clear()

    # ---- the fills' own rows, kept in memory (the ledger writes the same rows as Store) ----
    # This ledger is the only writer of its fills, positions and loss streak while it replays, so
    # apply_fill reads what it wrote before from here instead of SELECTing it back (the same
    # values: a Decimal's text converts back to the same Decimal), and so do `positions()` (on every
    # fill) and the streak breaker's `get_meta`. Loaded from the ledger at first use.
    _fill_ids: set | None = None
    _rows: dict | None = None                     # instrument -> (qty, avg price, realized pnl, trip pnl)
    _streak: object = _UNREAD                     # the stored streak (its JSON value)

    def _position_rows(self) -> dict:
        if self._rows is None:
            with self._lock:
                self._rows = {r[0]: tuple(map(Decimal, r[1:])) for r in self.conn.execute(
                    "SELECT instrument, qty, avg_price, realized_pnl, trip_pnl FROM positions")}
        return self._rows

    def _fill_known(self, c, trade_id: str) -> bool:
        if self._fill_ids is None:
            self._fill_ids = Store.fill_ids(self)       # nothing queued yet: no fill was applied here
        return trade_id in self._fill_ids

    def _position(self, c, instrument: str) -> tuple[Position, Decimal]:
        r = self._position_rows().get(instrument)
        return (Position(instrument, r[0], r[1], r[2]), r[3]) if r else (Position(instrument), ZERO)

    def _loss_streak(self, c) -> int:
        return self.get_meta(LOSS_STREAK, 0)

    def _streak_written(self, streak: int) -> None:
        self._streak = streak

    def _fill_written(self, trade_id: str) -> None:
        self._fill_ids.add(trade_id)

    def _put_position(self, row: tuple, pos: Position, trip: Decimal) -> None:
        super()._put_position(row, pos, trip)            # queued (_write_behind)
        self._rows[pos.instrument] = (pos.qty, pos.avg_price, pos.realized_pnl, trip)
        for listener in self.row_listeners["positions"]:   # what the book's trigger would have been handed
            listener(row[0], row[1], row[2])

    def positions(self) -> dict[str, Position]:
        return {i: Position(i, r[0], r[1], r[2]) for i, r in self._position_rows().items()}

    def get_meta(self, key: str, default=None):
        if key != LOSS_STREAK:
            return super().get_meta(key, default)
        if self._streak is _UNREAD:
            self._streak = super().get_meta(key, _ABSENT)
        return default if self._streak is _ABSENT else self._streak

    def set_meta(self, key: str, value, *, audit_kind: str | None = None) -> None:
        with self._lock:
            if key == LOSS_STREAK:
                self._streak_reset()
            super().set_meta(key, value, audit_kind=audit_kind)

    def set_state(self, state, reason: str, since: float, prev, meta: dict | None = None, **kwargs) -> None:
        with self._lock:
            if meta and LOSS_STREAK in meta:    # a reset's new epoch zeroes the streak in the same transaction
                self._streak_reset()
            super().set_state(state, reason, since, prev, meta, **kwargs)

    def _streak_reset(self) -> None:
        """Someone writes the streak: a streak queued by a fill is written first (not over the new value),
        and the next read reads the stored one."""
        self._flush()
        self._streak = _UNREAD

    # ---- the orders, kept in memory (rows as Store writes them; written to `orders` at the commit) ----
    # The order path writes an order's row ~4 times and reads it ~3 times; here those are dict operations
    # on immutable rows (read by name or index, as sqlite3.Row). The book mirror (book.py) is told of every
    # change its triggers would have seen (an INSERT, an UPDATE that sets a column it reads), with the
    # same values; the triggers fire again, with the final rows, when the batch writes them.
    _orders: dict | None = None                   # client id -> row, every order of the ledger (first use)

    def _order_rows(self) -> dict:
        if self._orders is None:
            info = list(self.conn.execute("PRAGMA table_info(orders)"))
            names = [r[1] for r in info]
            self._row = type("OrderRow", (_OrderRow,), {"__slots__": (), "_idx": {n: i for i, n in enumerate(names)}})
            self._blank = [_default(r[4]) for r in info]
            self._ix = tuple(names.index(n) for n in ("id", "client_order_id", "intent_key", "status",
                                                         "exchange_order_id", "last_error", "updated_at", "sent_at",
                                                         "filled", "avg_price", "instrument", "side", "stop_price",
                                                         "take_profit"))
            self._insert_ix = tuple(names.index(n.strip()) for n in _INTENT_COLS.split(","))
            self._book_ix = tuple(names.index(n.strip()) for n in _ORDER_COLS.split(","))
            self._upsert = (f"INSERT INTO orders VALUES ({','.join('?' * len(names))}) ON CONFLICT(id) DO UPDATE SET "
                            + ", ".join(f"{n} = excluded.{n}" for n in names[1:]))
            rows = [self._row(r) for r in self.conn.execute("SELECT * FROM orders ORDER BY id")]
            seq = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'orders'").fetchone()
            self._next_id = max(seq[0] if seq else 0, rows[-1][0] if rows else 0) + 1   # AUTOINCREMENT's rule
            self._orders, self._keys, self._live_ids, self._plans, self._dirty = {}, set(), {}, {}, {}
            for r in rows:
                self._keep(r)
            self._dirty.clear()
        return self._orders

    def _keep(self, row: tuple) -> None:
        """Hold a new version of an order's row (what the INSERT or UPDATE would have left)."""
        i_id, i_cid, i_key, i_status, *_, i_inst, i_side, i_stop, i_tp = self._ix
        row = self._row(row)
        cid = row[i_cid]
        self._orders[cid] = row
        self._dirty[cid] = None
        self._keys.add(row[i_key])
        if row[i_status] in _LIVE:
            self._live_ids[row[i_id]] = cid
        else:
            self._live_ids.pop(row[i_id], None)
        if row[i_side] == "buy" and row[i_stop] is not None and \
                row[i_id] > self._plans.get(row[i_inst], (0,))[0]:
            self._plans[row[i_inst]] = (row[i_id], row[i_stop], row[i_tp])

    def _told(self, row: tuple) -> None:
        """What the book's trigger would have been handed for this row."""
        book = tuple(row[i] for i in self._book_ix)
        for listener in self.row_listeners["orders"]:
            listener(*book)

    def _insert_order(self, c, prefix: str, cols: tuple) -> str:
        self._order_rows()
        if cols[0] in self._keys:
            raise sqlite3.IntegrityError("UNIQUE constraint failed: orders.intent_key")
        oid = self._next_id
        cid = _client_id(prefix, oid)
        row = list(self._blank)
        for i, v in zip(self._insert_ix, cols):
            row[i] = v
        row[self._ix[0]], row[self._ix[1]] = oid, cid
        self._next_id += 1
        self._keep(row)
        self._told(row)
        return cid

    def _update_order(self, c, cid: str, status: str, exchange_order_id, error, now: float, sent: bool) -> None:
        old = self._order_rows().get(cid)
        if old is None:
            return
        _, _, _, i_status, i_eid, i_err, i_upd, i_sent, *_ = self._ix
        row = list(old)
        row[i_status], row[i_upd] = status, now
        if exchange_order_id is not None:
            row[i_eid] = exchange_order_id
        if error is not None:
            row[i_err] = error
        if sent:
            row[i_sent] = now
        self._keep(row)
        self._told(row)

    def _order_fill(self, c, cid: str):
        r = self._order_rows().get(cid)
        return None if r is None else (r[self._ix[8]], r[self._ix[9]])

    def _set_order_fill(self, c, cid: str, filled: str, avg: str, now: float) -> None:
        old = self._order_rows().get(cid)
        if old is None:
            return
        row = list(old)
        row[self._ix[8]], row[self._ix[9]], row[self._ix[6]] = filled, avg, now
        self._keep(row)
        self._told(row)

    def order(self, cid: str):
        with self._lock:
            return self._order_rows().get(cid)

    def live_orders(self) -> list:
        with self._lock:
            rows = self._order_rows()
            return [rows[self._live_ids[i]] for i in sorted(self._live_ids)]

    def entry_plan(self, instrument: str):
        with self._lock:
            self._order_rows()
            p = self._plans.get(instrument)
        return (Decimal(p[1]), None if p[2] is None else Decimal(p[2])) if p else None

    def _orders_to_sql(self) -> None:
        if self._orders is not None and self._dirty:
            rows = self._orders
            # plain tuples: sqlite3 binds a tuple subclass's items through its (by-name) __getitem__
            self.conn.executemany(self._upsert, sorted((tuple(rows[c]) for c in self._dirty), key=itemgetter(0)))
            self._dirty.clear()

    def insert_foreign_order(self, o, status, note: str) -> None:
        with self._lock:
            self._flush()
            super().insert_foreign_order(o, status, note)
            self._orders = None                   # read again at the next use

    def to_sql(self) -> None:
        with self._lock:
            if getattr(self, "_batching", False):
                self._flush()

    fill_ids = _flushed_first(Store.fill_ids)
    orders = _flushed_first(Store.orders)
    orders_touched_since = _flushed_first(Store.orders_touched_since)
    intent_keys = _flushed_first(Store.intent_keys)
    order_by_exchange_id = _flushed_first(Store.order_by_exchange_id)
    history_start = _flushed_first(Store.history_start)
    is_fresh = _flushed_first(Store.is_fresh)
    audit_head = _flushed_first(Store.audit_head)
    verify_audit = _flushed_first(Store.verify_audit)
    stops = _flushed_first(Store.stops)
    decisions = _flushed_first(Store.decisions)

    def commit(self) -> None:
        with self._lock:
            self._flush()
            self.conn.execute("COMMIT")
            self.conn.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        with self._lock:
            self._flush()
            self.conn.execute("COMMIT")
            self._batching = False
        super().close()


class _Joined:
    """`ReplayLedger.tx()`: the batch's connection, under the ledger's lock; no BEGIN, no COMMIT."""
    __slots__ = ("ledger",)

    def __init__(self, ledger: ReplayLedger):
        self.ledger = ledger

    def __enter__(self):
        self.ledger._lock.acquire()
        return self.ledger.conn

    def __exit__(self, et, ev, tb) -> None:
        self.ledger._lock.release()


@dataclass
class BacktestResult:
    bars: int
    seconds: float
    start_equity: float
    end_equity: float
    max_drawdown_pct: float
    trades: int
    denials: int
    final_state: str
    state_reason: str
    decisions: str       # sha256 of every risk decision and fill in order: equal digests, same trading
    cpu_seconds: float = 0.0   # CPU time of the replay loop: its cost without the waits for a shared CPU


    @property
    def bars_per_second(self) -> float:
        return self.bars / self.seconds if self.seconds else float("inf")

    @property
    def bars_per_cpu_second(self) -> float:
        return self.bars / self.cpu_seconds if self.cpu_seconds else float("inf")

    def as_dict(self) -> dict:
        return {**self.__dict__, "bars_per_second": round(self.bars_per_second)}


def run(cfg: Config, bars: list[Bar], bar_seconds: float = 60.0, *, batched: bool = True,
        sqlite_exchange: bool = False) -> BacktestResult:
    """Replay `bars` from a fresh paper account. `batched=False` commits every ledger change
    on its own, as the live bot does, and `sqlite_exchange=True` keeps the paper exchange's book
    in (in-memory) SQLite as a running paper exchange does, instead of `ReplayPaperExchange`'s
    Python structures (both for comparison: same results, slower)."""
    sym = cfg.instruments[0].symbol
    now = [bars[0].ts if bars else 0.0]
    clock = partial(getitem, now, 0)   # now[0]: read ~3 times a bar; a C call, no Python frame as a lambda makes
    cfg = replace(cfg, bot={**cfg.bot, "equity_snapshot_s": 86400.0})
    store = ReplayLedger(":memory:", clock=clock) if batched else Store(":memory:", clock=clock)
    ex = (PaperExchange if sqlite_exchange else ReplayPaperExchange)(":memory:", {i.symbol: i for i in cfg.instruments}, quote=cfg.bot["quote"],
                       fee_rate=cfg.exchange["fee_rate"], slippage_bps=cfg.exchange["slippage_bps"],
                       starting_balance=cfg.exchange["starting_balance"], bar_seconds=bar_seconds,
                       clock=clock, manual=True)
    eng = Engine(cfg, store, ex, clock, live=False, resting_stops=False, dead_man=False)
    eng.om.refresh_account()
    eng._on_fill()
    start = float(cfg.exchange["starting_balance"])
    peak, mdd = start, 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for bar in bars:
        now[0] = bar.ts + bar_seconds
        eng.replay_bar(sym, bar, bar_seconds)
        eq = eng.equity_f
        if eq > peak:
            peak = eq
        elif peak > 0 and (peak - eq) / peak > mdd:
            mdd = (peak - eq) / peak
    if batched:
        store.commit()      # the last batch, with its rows and audit records: the replay's ledger is complete
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0   # the commit counted: it is the replay's work
    view = eng.sm.view()
    trades = store.conn.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
    denials = store.conn.execute("SELECT COUNT(*) FROM risk_decisions WHERE approved = 0").fetchone()[0]
    return BacktestResult(len(bars), secs, start, eng.equity_f, mdd * 100, trades, denials,
                          view.state.value, view.reason, _decisions_digest(store), cpu)


def _decisions_digest(store: Store) -> str:
    """What the replay decided, in order: every risk decision (intent, side, qty, approval, code)
    and every fill (side, qty, price, fee, realized pnl)."""
    h = hashlib.sha256()
    for q in ("SELECT ts, intent_key, side, qty, approved, code FROM risk_decisions ORDER BY id",
              "SELECT ts, side, qty, price, fee, fee_asset, realized_pnl FROM fills ORDER BY rowid"):
        for row in store.conn.execute(q):
            h.update(repr(tuple(row)).encode())
    return h.hexdigest()

