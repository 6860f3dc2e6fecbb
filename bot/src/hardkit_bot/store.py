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
equity peak, loss streak, risk epoch, audit key id) and the keyed, chained `audit` table.

The latched trading state is the one thing a damaged `-wal` must never roll back:
every change of it is checkpointed into the main database and mirrored in a fsynced
state file (`statefile.py`); `latch_doubt` says at open whether the two disagree.

One connection is shared by the engine and control threads behind an RLock
(`tx()`); the control thread never waits on the strategy, only on a statement.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from . import audit, statefile
from .model import CLIENT_ID_RE, ZERO, Fill, Intent, OrderStatus, OrderType, Position, Side, TradingState

#: The meta key of the losing round-trip streak: the ledger counts it as fills close a trip (a win resets
#: it), the streak breaker reads it, a reset's new epoch zeroes it, and `restore` reports it.
LOSS_STREAK = "consecutive_losses"

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
    qty TEXT NOT NULL, price TEXT NOT NULL, fee TEXT NOT NULL, ts REAL NOT NULL, realized_pnl TEXT NOT NULL,
    fee_asset TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS foreign_trades (
    trade_id TEXT PRIMARY KEY, instrument TEXT NOT NULL, side TEXT NOT NULL, qty TEXT NOT NULL, price TEXT NOT NULL,
    ts REAL NOT NULL, order_ref TEXT NOT NULL, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    instrument TEXT PRIMARY KEY, qty TEXT NOT NULL, avg_price TEXT NOT NULL,
    realized_pnl TEXT NOT NULL, trip_pnl TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS stops (
    instrument TEXT PRIMARY KEY, stop_price TEXT NOT NULL, take_profit TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS equity (
    ts REAL NOT NULL, equity TEXT NOT NULL, cash TEXT NOT NULL, unrealized TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS equity_ts ON equity(ts);
CREATE TABLE IF NOT EXISTS risk_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, intent_key TEXT NOT NULL, instrument TEXT NOT NULL,
    side TEXT NOT NULL, qty TEXT NOT NULL, approved INTEGER NOT NULL, code TEXT, context TEXT NOT NULL);
""" + audit.SCHEMA

_LIVE = tuple(s.value for s in OrderStatus if s.live)

#: Columns added after a ledger may have been created: (table, column, declaration).
_ADDED_COLUMNS = (("fills", "fee_asset", "TEXT NOT NULL DEFAULT ''"),)

#: Alphabet and length of a ledger epoch: 36^8 ~ 2.8e12 values, so two ledgers (or two
#: sessions of one restored ledger) practically never share one.
_EPOCH_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_EPOCH_LEN = 8


def copy_database(src: str | Path, dest: str | Path) -> None:
    """A consistent single-file copy of another SQLite file of the bot's (the paper exchange's book)
    through the online backup API: what Store.backup_to does for the ledger."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=10)
    copy = sqlite3.connect(tmp)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")
        if copy.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
            raise sqlite3.DatabaseError(f"the copy of {src} fails SQLite's integrity check")
    finally:
        copy.close()
        source.close()
    os.replace(tmp, dest)


def _d(v: str | None) -> Decimal | None:
    return None if v is None else Decimal(v)


class Store:
    #: The in-memory book (book.py) rebuilds its risk aggregates inside every write that changes it,
    #: so an order reads a finished state; a replay's ledger (backtest.ReplayLedger) defers it to the read.
    book_rebuild_on_write = True
    #: {"orders": [...], "positions": [...]}: called with a row's book columns (book.py `_ORDER_COLS`,
    #: `_POSITION_COLS`) by a ledger that keeps those rows in memory until its commit (a replay's:
    #: backtest.ReplayLedger) as it changes them; None here: the book's triggers see every write.
    row_listeners: dict[str, list] | None = None

    def __init__(self, path: str | Path, clock=time.time, audit_key: bytes | None = None, *, readonly: bool = False):
        """Open (or create) the ledger. Raises sqlite3.DatabaseError when the file is not a
        database and audit.AuditKeyError when `audit_key` does not fit its chain.
        `readonly`: an existing ledger, for reading only (status, audit verify); nothing is written."""
        self.path = str(path)
        self.clock = clock
        self._key = audit_key
        self._lock = threading.RLock()
        self.rollbacks = 0   # transactions that did not commit (see tx())
        self.state_file = None if self.path == ":memory:" else statefile.path_for(self.path)
        self._epoch: str | None = None
        if readonly:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=10)
            self.conn.row_factory = sqlite3.Row
            try:
                self._refuse_foreign_database()
                self.get_state()
                self.latch_doubt, self.file_latch = self._cross_check(False)
            except BaseException:
                self.conn.close()
                raise
            return
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self.conn.row_factory = sqlite3.Row
        try:
            self._refuse_foreign_database()
            if self.state_file is not None:
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=10000")
            with self._lock:
                self.conn.executescript(SCHEMA)
                for table, column, decl in _ADDED_COLUMNS:
                    if column not in {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            with self.tx():
                fresh = self.conn.execute("SELECT 1 FROM trading_state").fetchone() is None
                self._check_audit_key(fresh)
                if fresh:
                    self.conn.execute("INSERT INTO trading_state VALUES (1, ?, ?, ?)",
                                      (TradingState.ACTIVE.value, "fresh ledger", self.clock()))
            #: Why the latched state cannot be trusted (None when the ledger and the state file agree).
            self.latch_doubt, self.file_latch = self._cross_check(fresh)
        except BaseException:
            self.conn.close()
            raise

    def _refuse_foreign_database(self) -> None:
        """Raise sqlite3.DatabaseError, before anything is written, for another program's SQLite
        database (e.g. the paper exchange's book copied over the ledger): opening it as a ledger
        added the ledger's tables to it, then failed on its own tables of the same names (a
        traceback from `run`), or let an offline `halt` report success on it. A ledger has
        `trading_state` from its first open (created with every other table); an empty file or
        database becomes a new ledger."""
        tables = sorted(r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        if tables and "trading_state" not in tables:
            raise sqlite3.DatabaseError(f"an SQLite database, but not a hardkit-bot ledger (tables "
                                        f"{', '.join(tables[:6])}{', ...' if len(tables) > 6 else ''}; no trading_state)")

    def _check_audit_key(self, fresh: bool) -> None:
        kid = audit.stored_key_id(self.conn)
        if fresh or (kid is None and self.conn.execute("SELECT 1 FROM audit LIMIT 1").fetchone() is None):
            if self._key is not None and kid is None:
                self.conn.execute("INSERT INTO meta VALUES ('audit_key_id', ?)", (json.dumps(audit.key_id(self._key)),))
            elif self._key is None and kid is not None:
                raise audit.AuditKeyError(f"{self.path}: the audit chain is keyed (key id {kid}) but no audit key was given")
            return
        if self._key is None and kid is not None:
            raise audit.AuditKeyError(f"{self.path}: the audit chain is keyed (key id {kid}) but no audit key was given "
                                      "($CREDENTIALS_DIRECTORY/audit-key or --audit-key-file)")
        if self._key is not None and kid != audit.key_id(self._key):
            raise audit.AuditKeyError(
                f"{self.path}: the audit key does not fit this ledger (ledger key id {kid}, given {audit.key_id(self._key)})"
                if kid else f"{self.path}: this ledger's audit chain was started without a key; a keyed bot will not "
                            "extend an unkeyed chain (move the ledger aside to start a keyed one)")

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def _cross_check(self, fresh: bool) -> tuple[str | None, statefile.Latch | None]:
        """Compare the ledger's latch with the state file; write the file for a fresh ledger."""
        if self.state_file is None:
            return None, None
        try:
            on_file = statefile.read(self.state_file)
        except statefile.StateFileError as e:
            return f"{e}", None
        st, reason, since = self.get_state()
        if fresh:
            if on_file is not None:
                return (f"the ledger is new but {self.state_file.name} records {on_file.state} since {on_file.since} "
                        f"({on_file.reason}): the ledger was lost, replaced or damaged"), on_file
            statefile.write(self.state_file, statefile.Latch(st.value, reason, since))
            return None, None
        if on_file is None:
            return f"{self.state_file.name} is missing beside an existing ledger", None
        if (on_file.state, on_file.since) != (st.value, since):
            return (f"the ledger says {st.value} since {since}, {self.state_file.name} says {on_file.state} since "
                    f"{on_file.since} (a damaged or lost -wal, or a restored file)"), on_file
        return None, on_file

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def backup_to(self, dest: str | Path) -> statefile.Latch:
        """A consistent copy of this ledger in `dest` (a new single-file database, never a raw copy of
        the live WAL files): SQLite's online backup API reads one snapshot while the bot keeps writing.

        The copy is integrity-checked, and its state file is written from the copy's own latch, so
        the two agree at restore (a restored ledger without it would boot HALTED on doubt).
        Refuses (ValueError) a ledger whose latch is in doubt: that must be seen, not backed up."""
        if self.latch_doubt:
            raise ValueError(f"the ledger's latched state is in doubt ({self.latch_doubt}): not backed up")
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        copy = sqlite3.connect(tmp)
        try:
            with self._lock:
                self.conn.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
            check = copy.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:
                raise sqlite3.DatabaseError(f"the copy fails SQLite's integrity check: {check[:3]}")
            row = copy.execute("SELECT state, reason, since FROM trading_state WHERE id = 1").fetchone()
        finally:
            copy.close()
        if row is None:
            tmp.unlink(missing_ok=True)
            raise sqlite3.DatabaseError("the copy has no trading state row")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        latch = statefile.Latch(row[0], row[1], row[2])
        statefile.write(statefile.path_for(dest), latch)
        return latch

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
        audit.append(self.conn, self.clock(), kind, payload, self._key)

    def _write_behind(self, sql: str, params: tuple) -> None:
        """A write whose rows the running bot does not read back through SQL (risk decisions; stops, read
        at start; a fill, its position and the loss streak, which a replay's ledger also keeps in memory):
        executed now, in the caller's transaction. A replay's ledger queues it for its batch's commit."""
        self.conn.execute(sql, params)

    def to_sql(self) -> None:
        """Write what this ledger holds outside SQLite (nothing: a replay's ledger has queued rows) before
        someone reads the tables through `conn`."""

    def audit_head(self) -> tuple[int, str]:
        with self._lock:
            return audit.head(self.conn)

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
        if r is None:
            raise sqlite3.DatabaseError("the ledger has no trading state row")
        return TradingState(r[0]), r[1], r[2]

    def verify_audit(self, key: bytes | None) -> audit.VerifyResult:
        with self._lock:
            return audit.verify(self.conn, key)

    def set_state(self, state: TradingState, reason: str, since: float, prev: TradingState,
                  meta: dict[str, Any] | None = None, audit_kind: str = "state", note: dict | None = None) -> None:
        """Change the latch (with `meta` changes, None deleting a key, in the same transaction),
        then make it durable outside the -wal: checkpoint and state file.

        All of it under the store's lock, so `close()` (a bot shutting down while a control thread
        halts it) waits for both copies: a commit whose state file is never written would boot
        the next start in doubt, with the operator's reason lost."""
        with self._lock:
            with self.tx() as c:
                c.execute("UPDATE trading_state SET state = ?, reason = ?, since = ? WHERE id = 1",
                          (state.value, reason, since))
                for key, value in (meta or {}).items():
                    if value is None:
                        c.execute("DELETE FROM meta WHERE key = ?", (key,))
                    else:
                        c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                  (key, json.dumps(value)))
                self.audit(audit_kind, {"from": prev.value, "to": state.value, "reason": reason, "since": since,
                                        **(note or {}), **({"meta": meta} if meta else {})})
            if self.state_file is not None:
                self.conn.execute("PRAGMA wal_checkpoint(FULL)")
                statefile.write(self.state_file, statefile.Latch(state.value, reason, since))
            self.latch_doubt = None

    # ---- orders ----------------------------------------------------------
    def _session_epoch(self, c: sqlite3.Connection) -> str:
        """A fresh random epoch for this ledger session, recorded in `meta.ledger_epochs`.

        Row ids restart in a new ledger and repeat in a restored backup, so an id built from
        the row id alone collides with orders the exchange already holds; a new epoch per
        session (each time the ledger is opened and first writes an intent) never does."""
        if self._epoch is None:
            epochs = json.loads((c.execute("SELECT value FROM meta WHERE key='ledger_epochs'").fetchone() or ["[]"])[0])
            while True:
                epoch = "".join(secrets.choice(_EPOCH_ALPHABET) for _ in range(_EPOCH_LEN))
                if epoch not in epochs:
                    break
            c.execute("INSERT INTO meta VALUES ('ledger_epochs', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (json.dumps(epochs + [epoch]),))
            self.audit("ledger_epoch", {"epoch": epoch})
            self._epoch = epoch
        return self._epoch

    def insert_intent(self, intent: Intent, instance_id: str) -> str:
        """Persist an approved intent as PENDING_SUBMIT and return its client order id.

        The id is `<instance>-<session epoch>-<row id>`: unique within the ledger (AUTOINCREMENT
        never reuses a row id) and across ledgers (the epoch), and within Binance's
        `CLIENT_ID_RE` (6 + 1 + 8 + 1 + up to 16 digits).
        """
        now = self.clock()
        with self.tx() as c:
            cid = self._insert_order(c, f"{instance_id}-{self._session_epoch(c)}-", (
                intent.key, intent.instrument, intent.side.value, intent.order_type.value, str(intent.qty),
                str(intent.ref_price), _s(intent.limit_price), _s(intent.stop_price), _s(intent.take_profit),
                int(intent.reduce_only), int(intent.protective), intent.reason,
                OrderStatus.PENDING_SUBMIT.value, now, now))
            self.audit("intent", {"client_order_id": cid, "key": intent.key, "instrument": intent.instrument,
                                  "side": intent.side.value, "qty": str(intent.qty), "type": intent.order_type.value,
                                  "price": _s(intent.limit_price), "reduce_only": intent.reduce_only,
                                  "protective": intent.protective, "reason": intent.reason})
        return cid

    def _insert_order(self, c: sqlite3.Connection, prefix: str, cols: tuple) -> str:
        """Insert an intent's row (`_INTENT_COLS`); its client id is `prefix` + its row id."""
        cur = c.execute(f"INSERT INTO orders ({_INTENT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", cols)
        cid = _client_id(prefix, cur.lastrowid)
        c.execute("UPDATE orders SET client_order_id = ? WHERE id = ?", (cid, cur.lastrowid))
        return cid

    def insert_foreign_order(self, o, status: OrderStatus, note: str) -> None:
        """Record an order found on the exchange that the ledger did not have (EXTERNAL or adopted).

        A stop-loss sell is recorded protective: a halt cancels entries, never a stop that guards a position."""
        now = self.clock()
        cid = o.client_order_id or f"external:{o.exchange_id}"
        guard = int(o.order_type is OrderType.STOP and o.side is Side.SELL)
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO orders (client_order_id, intent_key, instrument, side, order_type, qty, ref_price,"
                " limit_price, stop_price, reduce_only, protective, reason, status, exchange_order_id, filled, avg_price,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (cid, f"{note}:{cid}", o.instrument, o.side.value, o.order_type.value, str(o.qty),
                 str(o.price or o.avg_price or o.trigger or 0), _s(o.price), _s(o.trigger), guard, guard, note,
                 status.value, o.exchange_id, str(o.filled), _s(o.avg_price), now, now))
            self.audit("reconcile_" + note, {"client_order_id": cid, "exchange_order_id": o.exchange_id,
                                             "instrument": o.instrument, "status": status.value})

    def update_order(self, cid: str, status: OrderStatus, *, exchange_order_id: str | None = None,
                     error: str | None = None, sent: bool = False) -> None:
        now = self.clock()
        with self.tx() as c:
            self._update_order(c, cid, status.value, exchange_order_id, error, now, sent)
            self.audit("order", {"client_order_id": cid, "status": status.value,
                                 "exchange_order_id": exchange_order_id, "error": error})

    def _update_order(self, c: sqlite3.Connection, cid: str, status: str, exchange_order_id: str | None,
                      error: str | None, now: float, sent: bool) -> None:
        c.execute("UPDATE orders SET status = ?, exchange_order_id = COALESCE(?, exchange_order_id),"
                  " last_error = COALESCE(?, last_error), updated_at = ?,"
                  " sent_at = CASE WHEN ? THEN ? ELSE sent_at END WHERE client_order_id = ?",
                  (status, exchange_order_id, error, now, int(sent), now, cid))

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
    def apply_fill(self, fill: Fill, min_position: Decimal = ZERO) -> Decimal | None:
        """Record a fill and update the position atomically; idempotent by trade id.

        Returns the realized PnL of the fill, or None if it was already recorded.
        Closing a round trip (a sell leaving less than `min_position`: the dust that
        base-coin fees leave unsellable) updates the consecutive-loss counter in the same
        transaction; the dust stays in the position, as it stays on the exchange, and is
        sold with the next position.
        """
        now = self.clock()
        with self.tx() as c:
            if self._fill_known(c, fill.trade_id):
                return None
            pos, trip = self._position(c, fill.instrument)
            fee_quote = fill.fee if fill.fee_in_quote else ZERO   # a third currency (BNB) is not our money
            pnl = pos.apply(fill.side, fill.qty, fill.price, fee_quote, fill.fee if fill.fee_in_base else ZERO)
            trip += pnl  # buy fees sit in the cost basis, so the sell's pnl carries them
            self._write_behind("INSERT INTO fills VALUES (?,?,?,?,?,?,?,?,?,?)",
                               (fill.trade_id, fill.client_order_id, fill.instrument, fill.side.value, str(fill.qty),
                                str(fill.price), str(fill.fee), fill.ts, str(pnl), fill.fee_asset))
            closed_trip = (pos.qty == ZERO or pos.qty < min_position) and fill.side is Side.SELL
            if closed_trip:
                streak = self._loss_streak(c) + 1 if trip < ZERO else 0
                self._write_behind("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                   (LOSS_STREAK, json.dumps(streak)))
                self.audit("round_trip", {"instrument": fill.instrument, "pnl": str(trip), "consecutive_losses": streak})
                trip = ZERO
                self._streak_written(streak)
            self._put_position((fill.instrument, str(pos.qty), str(pos.avg_price), str(pos.realized_pnl), str(trip), now),
                               pos, trip)
            row = self._order_fill(c, fill.client_order_id)
            if row is not None:
                filled = Decimal(row[0]) + fill.qty
                prev_avg = _d(row[1]) or ZERO
                avg = (prev_avg * Decimal(row[0]) + fill.price * fill.qty) / filled
                self._set_order_fill(c, fill.client_order_id, str(filled), str(avg), now)
            self.audit("fill", {"trade_id": fill.trade_id, "client_order_id": fill.client_order_id,
                                "instrument": fill.instrument, "side": fill.side.value, "qty": str(fill.qty),
                                "price": str(fill.price), "fee": str(fill.fee), "fee_asset": fill.fee_asset,
                                "realized_pnl": str(pnl)})
            self._fill_written(fill.trade_id)
        return pnl

    # apply_fill's reads of what earlier fills wrote, and its notes of what it wrote: the live ledger reads
    # the rows in the fill's transaction (another process may have written them); a replay's ledger, the
    # only writer of its rows, keeps them in memory (backtest.ReplayLedger)
    def _fill_known(self, c: sqlite3.Connection, trade_id: str) -> bool:
        return c.execute("SELECT 1 FROM fills WHERE trade_id = ?", (trade_id,)).fetchone() is not None

    def _position(self, c: sqlite3.Connection, instrument: str) -> tuple[Position, Decimal]:
        """The position's row as (Position, trip pnl so far)."""
        r = c.execute("SELECT qty, avg_price, realized_pnl, trip_pnl FROM positions WHERE instrument = ?",
                      (instrument,)).fetchone()
        return (Position(instrument, *map(Decimal, r[:3])), Decimal(r[3])) if r else (Position(instrument), ZERO)

    def _order_fill(self, c: sqlite3.Connection, cid: str) -> tuple[str, str | None] | None:
        """The order's (filled, avg_price) as stored."""
        return c.execute("SELECT filled, avg_price FROM orders WHERE client_order_id = ?", (cid,)).fetchone()

    def _set_order_fill(self, c: sqlite3.Connection, cid: str, filled: str, avg: str, now: float) -> None:
        c.execute("UPDATE orders SET filled = ?, avg_price = ?, updated_at = ? WHERE client_order_id = ?",
                  (filled, avg, now, cid))

    def _loss_streak(self, c: sqlite3.Connection) -> int:
        return json.loads((c.execute("SELECT value FROM meta WHERE key = ?", (LOSS_STREAK,)).fetchone() or ["0"])[0])

    def _streak_written(self, streak: int) -> None:
        """apply_fill wrote the loss streak (nothing to note for the live ledger)."""

    def _fill_written(self, trade_id: str) -> None:
        """apply_fill wrote the fill (nothing to note for the live ledger)."""

    def _put_position(self, row: tuple, pos: Position, trip: Decimal) -> None:
        """Upsert a position's row (`row`: its columns; `pos`, `trip`: the same values as numbers)."""
        self._write_behind("INSERT INTO positions VALUES (?,?,?,?,?,?) ON CONFLICT(instrument) DO UPDATE SET"
                           " qty=excluded.qty, avg_price=excluded.avg_price, realized_pnl=excluded.realized_pnl,"
                           " trip_pnl=excluded.trip_pnl, updated_at=excluded.updated_at", row)

    def positions(self) -> dict[str, Position]:
        with self._lock:
            rows = self.conn.execute("SELECT instrument, qty, avg_price, realized_pnl FROM positions").fetchall()
        return {r[0]: Position(r[0], Decimal(r[1]), Decimal(r[2]), Decimal(r[3])) for r in rows}

    def fill_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.conn.execute("SELECT trade_id FROM fills")}

    # ---- what reconciliation compares with the exchange's history ------------
    def is_fresh(self) -> bool:
        """True if this ledger has never known an order, a fill or a foreign trade."""
        with self._lock:
            return not any(self.conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                           for t in ("orders", "fills", "foreign_trades"))

    def history_start(self) -> float | None:
        """Time from which the exchange's trades must all be known here: the newest fill (or,
        with no fill yet, the first order or foreign trade); None for a fresh ledger."""
        with self._lock:
            r = self.conn.execute("SELECT MAX(ts) FROM fills").fetchone()[0]
            if r is None:
                r = self.conn.execute("SELECT MIN(t) FROM (SELECT MIN(created_at) AS t FROM orders"
                                      " UNION ALL SELECT MIN(ts) FROM foreign_trades)").fetchone()[0]
        return r

    def foreign_trade_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.conn.execute("SELECT trade_id FROM foreign_trades")}

    def record_foreign_trades(self, trades: list[Fill]) -> None:
        """Remember trades on the account that no order of this ledger explains (audited once),
        so a restart after the operator's reset does not report them again."""
        now = self.clock()
        with self.tx() as c:
            for t in trades:
                c.execute("INSERT OR IGNORE INTO foreign_trades VALUES (?,?,?,?,?,?,?,?)",
                          (t.trade_id, t.instrument, t.side.value, str(t.qty), str(t.price), t.ts,
                           t.client_order_id or t.order_id, now))
            self.audit("reconcile_foreign_trades", {"trades": [t.trade_id for t in trades]})

    def order_by_exchange_id(self, exchange_order_id: str) -> sqlite3.Row | None:
        with self._lock:
            return self.conn.execute("SELECT * FROM orders WHERE exchange_order_id = ?", (exchange_order_id,)).fetchone()

    # ---- stops -----------------------------------------------------------
    def set_stop(self, instrument: str, stop: Decimal | None, take_profit: Decimal | None = None) -> None:
        with self.tx():
            if stop is None:
                self._write_behind("DELETE FROM stops WHERE instrument = ?", (instrument,))
            else:
                self._write_behind("INSERT INTO stops VALUES (?,?,?,?) ON CONFLICT(instrument) DO UPDATE SET"
                                   " stop_price=excluded.stop_price, take_profit=COALESCE(excluded.take_profit,"
                                   " stops.take_profit), updated_at=excluded.updated_at",
                                   (instrument, str(stop), _s(take_profit), self.clock()))
            self.audit("stop", {"instrument": instrument, "stop": _s(stop), "take_profit": _s(take_profit)})

    def stops(self) -> dict[str, tuple[Decimal, Decimal | None]]:
        with self._lock:
            rows = self.conn.execute("SELECT instrument, stop_price, take_profit FROM stops").fetchall()
        return {r[0]: (Decimal(r[1]), _d(r[2])) for r in rows}

    # ---- equity and decisions ---------------------------------------------
    def snapshot_equity(self, ts: float, equity: Decimal, cash: Decimal, unrealized: Decimal) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO equity VALUES (?,?,?,?)", (ts, str(equity), str(cash), str(unrealized)))

    def last_equity_before(self, ts: float) -> tuple[float, float] | None:
        """(ts, equity) of the last snapshot strictly before `ts`, if any."""
        with self._lock:
            r = self.conn.execute("SELECT ts, equity FROM equity WHERE ts < ? ORDER BY ts DESC LIMIT 1", (ts,)).fetchone()
        return (r[0], float(r[1])) if r else None

    def record_decision(self, intent: Intent, denial, cid: str | None = None) -> None:
        now = self.clock()
        ctx = dict(denial.context) if denial else {}
        with self.tx():
            self._write_behind("INSERT INTO risk_decisions (ts, intent_key, instrument, side, qty, approved, code,"
                               " context) VALUES (?,?,?,?,?,?,?,?)",
                               (now, intent.key, intent.instrument, intent.side.value, str(intent.qty),
                                int(denial is None), denial.code.value if denial else None,
                                json.dumps(ctx) if ctx else "{}"))   # (json.dumps({}): the same text)
            self.audit("risk_decision", {"key": intent.key, "approved": denial is None,
                                         "code": denial.code.value if denial else None, "context": ctx,
                                         "instrument": intent.instrument, "side": intent.side.value,
                                         "qty": str(intent.qty), "protective": intent.protective})

    def decisions(self) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute("SELECT * FROM risk_decisions ORDER BY id").fetchall()


#: The columns an intent's INSERT sets (the rest: the client id set after it, the defaults).
_INTENT_COLS = ("intent_key, instrument, side, order_type, qty, ref_price, limit_price, stop_price, take_profit,"
                " reduce_only, protective, reason, status, created_at, updated_at")


def _client_id(prefix: str, row_id: int) -> str:
    cid = f"{prefix}{row_id}"
    if not CLIENT_ID_RE.match(cid):
        raise ValueError(f"client order id {cid!r} does not fit the exchanges' id rules")
    return cid


def _s(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


def intent_from_row(r: sqlite3.Row) -> Intent:
    return Intent(key=r["intent_key"], instrument=r["instrument"], side=Side(r["side"]), qty=Decimal(r["qty"]),
                  ref_price=Decimal(r["ref_price"]), order_type=OrderType(r["order_type"]),
                  limit_price=_d(r["limit_price"]), stop_price=_d(r["stop_price"]),
                  take_profit=_d(r["take_profit"]), reduce_only=bool(r["reduce_only"]),
                  protective=bool(r["protective"]), reason=r["reason"])
