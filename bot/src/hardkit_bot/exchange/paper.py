"""The built-in paper exchange: realistic fills, persistent state, fault injection.

Its state (balances, orders, trades, injected faults) lives in its *own* SQLite
file, separate from the bot's ledger, and every call commits before it returns.
The exchange therefore outlives the bot: a SIGKILL of the bot between "the
exchange accepted" and "the bot recorded it" leaves exactly what a real venue
would hold, which is what makes the crash tests honest.

Market model: one bar per `bar_seconds` of wall-clock time since the account was
created (or bars fed explicitly in backtests). The last price is the close of the
last closed bar. Market orders fill at last price plus adverse slippage
(`slippage_bps`) and pay `fee_rate` in the currency Binance spot takes it in:
the coin received (a buy pays in the base coin, a sell in quote); a market buy
needs (and locks) exactly its slipped notional in free quote, or it is rejected.
Limit orders rest, lock their funds and fill at their limit price when a later
bar trades through it. Stop orders (stop-market sells) rest with their base coin
locked and fill like a market order once a bar trades at or below the trigger
(at the trigger, or at the open if the bar gapped below it); they fire whether
or not the bot is running. Client order ids follow Binance's rules
(`CLIENT_ID_RE`) and are unique for the life of the account.

Dead-man's switch (`cancel_all_after`, ccxt's `cancelAllOrdersAfter`): armed with a
timeout, refreshed by arming again, disarmed with 0. When it expires, every open
order of the account is cancelled, protective stops included, as real venues do;
bars that closed before the deadline still fill what they would have. Like stops,
it acts whether or not the bot is running (on the venue's next call from anyone).

Faults (`inject()`, persisted, consumed one by one):
  timeout_lost        create times out and the request never arrived
  timeout_accepted    create is accepted, then the response is lost (timeout)
  reject              create is rejected
  duplicate_response  create answers "duplicate client id" although it accepted it
  partial:F           a market order fills fraction F now, the rest on the next bar
  gap:P               the price jumps P percent at the next bar
  vol_spike:M         the next 20 bars have their range multiplied by M
  garbage             the next ticker/candles answer contains NaN prices
  lookup_miss         the next order lookup by client id answers "not found" although the
                      order exists (a venue's brief inconsistency)
  hold:S              the next market order is accepted but rests unfilled for S seconds
                      (a slow or halted market), then fills on the next bar
  switch_timeout      the next dead-man's switch call times out without taking effect
"""
from __future__ import annotations

import json
import math
import random
import sqlite3
import threading
import time
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from ..model import (CLIENT_ID_RE, ZERO, AccountView, Balance, Bar, ExchangeOrder, Fill, Instrument,
                     OrderStatus, OrderType, Side)
from .base import (BadExchangeData, DuplicateClientOrderId, ExchangeTimeout, OrderNotFound,
                   OrderRejected)
from .market import load_csv

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS balances (asset TEXT PRIMARY KEY, free TEXT NOT NULL, locked TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL UNIQUE, symbol TEXT NOT NULL,
    side TEXT NOT NULL, type TEXT NOT NULL, qty TEXT NOT NULL, price TEXT, status TEXT NOT NULL,
    filled TEXT NOT NULL, avg_price TEXT, locked TEXT NOT NULL, created REAL NOT NULL, bar INTEGER NOT NULL,
    trigger TEXT, hold_until REAL);
CREATE TABLE IF NOT EXISTS trades (
    trade_id TEXT PRIMARY KEY, order_id INTEGER NOT NULL, client_id TEXT NOT NULL, symbol TEXT NOT NULL,
    side TEXT NOT NULL, qty TEXT NOT NULL, price TEXT NOT NULL, fee TEXT NOT NULL, ts REAL NOT NULL,
    fee_asset TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS faults (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, arg REAL NOT NULL);
CREATE TABLE IF NOT EXISTS market_events (symbol TEXT NOT NULL, bar INTEGER NOT NULL, kind TEXT NOT NULL, arg REAL NOT NULL);
CREATE INDEX IF NOT EXISTS trades_client_id ON trades(client_id);
CREATE INDEX IF NOT EXISTS trades_order_id ON trades(order_id);
CREATE INDEX IF NOT EXISTS orders_status ON orders(status);
"""
# The indexes: a fill counts its order's trades, the bot reads an order's trades and the open orders,
# each on every order; without them each of those scanned the account's whole history.

#: Columns added after an exchange file may have been created: (table, column, declaration).
_ADDED_COLUMNS = (("orders", "trigger", "TEXT"), ("trades", "fee_asset", "TEXT NOT NULL DEFAULT ''"),
                  ("orders", "hold_until", "REAL"))

BPS = Decimal("0.0001")
#: meta key of the dead-man's switch: the time it fires, or null when disarmed.
_SWITCH = "dead_man_deadline"


class _Tx:
    """One committed transaction of the exchange's book, under its lock (rolled back on an exception)."""
    __slots__ = ("ex",)

    def __init__(self, ex: "PaperExchange"):
        self.ex = ex

    def __enter__(self) -> None:
        self.ex._lock.acquire()
        self.ex.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, et, ev, tb) -> None:
        try:
            self.ex.db.execute("ROLLBACK" if et else "COMMIT")
        finally:
            self.ex._lock.release()


class SeriesSource:
    """Deterministic, lazily extended bar closes for one symbol (generated or CSV)."""

    def __init__(self, seed: int, start_price: float, csv_bars: list[Bar] | None = None, vol: float = 0.0015):
        self.rng = random.Random(seed)
        self.vol = vol
        self.bars: list[tuple[float, float, float, float]] = []   # o, h, l, c (unitless walk)
        self.price = start_price
        self.drift = 0.0
        self.finite = csv_bars is not None
        if csv_bars is not None:
            self.bars = [(b.open, b.high, b.low, b.close) for b in csv_bars]

    def get(self, i: int) -> tuple[float, float, float, float] | None:
        while not self.finite and len(self.bars) <= i:
            k = len(self.bars)
            if k % 300 == 0:
                self.drift = self.rng.choice((-1.0, 0.0, 1.0)) * self.vol * self.rng.uniform(0.05, 0.25)
            o = self.price
            c = o * math.exp(self.drift + self.rng.gauss(0.0, self.vol))
            h = max(o, c) * (1.0 + abs(self.rng.gauss(0.0, self.vol * 0.6)))
            low = min(o, c) * (1.0 - abs(self.rng.gauss(0.0, self.vol * 0.6)))
            self.bars.append((o, h, low, c))
            self.price = c
        return self.bars[i] if 0 <= i < len(self.bars) else None


class PaperExchange:
    def __init__(self, path: str | Path, instruments: dict[str, Instrument], *, quote: str = "USDT",
                 fee_rate: Decimal = Decimal("0.001"), slippage_bps: Decimal = Decimal("5"),
                 starting_balance: Decimal = Decimal("10000"), bar_seconds: float = 1.0,
                 series: str = "generated", seed: int = 42, start_price: float = 30000.0,
                 clock=time.time, manual: bool = False):
        self.instruments = instruments
        self.quote = quote
        self.fee_rate = fee_rate
        self.slippage = slippage_bps * BPS
        self.bar_seconds = bar_seconds
        self.clock = clock
        self.manual = manual
        self._lock = threading.RLock()
        self._open_book(path)
        with self._tx():
            if self._meta("t0") is None:
                self._set_meta("t0", clock())
                self._seed_balance(quote, starting_balance)
        self.t0 = float(self._meta("t0"))
        csv_bars = None if series == "generated" else load_csv(series)
        self.sources = {s: SeriesSource(seed + k, start_price, csv_bars) for k, s in enumerate(sorted(instruments))}
        self._manual_bar: dict[str, tuple[int, Bar]] = {}
        self._open = len(self._open_rows())
        p = self._meta("processed")
        self._processed: int | None = None if p is None else int(p)

    # ---- the book's storage: every read and write of balances, orders, trades, faults, meta ----------
    # (ReplayPaperExchange, paper_replay.py, keeps the same rows in memory for a replay; the logic
    # above and below these methods is the one both run)
    def _open_book(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        if str(path) != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        else:
            self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA busy_timeout=10000")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self.db.execute(stmt)
        for table, column, decl in _ADDED_COLUMNS:
            if column not in {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def _tx(self) -> "_Tx":
        return _Tx(self)

    def _meta(self, key: str):
        r = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else json.loads(r[0])

    def _set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, json.dumps(value)))

    def _seed_balance(self, asset: str, free: Decimal) -> None:
        self.db.execute("INSERT OR IGNORE INTO balances VALUES (?, ?, '0')", (asset, str(free)))

    def _bal(self, asset: str) -> tuple[Decimal, Decimal]:
        r = self.db.execute("SELECT free, locked FROM balances WHERE asset = ?", (asset,)).fetchone()
        return (Decimal(r[0]), Decimal(r[1])) if r else (ZERO, ZERO)

    def _put(self, asset: str, free: Decimal, locked: Decimal) -> None:
        self.db.execute("INSERT INTO balances VALUES (?,?,?) ON CONFLICT(asset) DO UPDATE SET free=excluded.free,"
                        " locked=excluded.locked", (asset, str(free), str(locked)))

    def _balance_rows(self) -> list[tuple[str, str, str]]:
        return self.db.execute("SELECT asset, free, locked FROM balances").fetchall()

    def _add_fault(self, kind: str, arg: float) -> None:
        self.db.execute("INSERT INTO faults (kind, arg) VALUES (?, ?)", (kind, arg))

    def _has_fault(self, kinds: tuple[str, ...]) -> bool:
        return self.db.execute(f"SELECT 1 FROM faults WHERE kind IN ({','.join('?' * len(kinds))}) LIMIT 1",
                               kinds).fetchone() is not None

    def _take_fault(self, kinds: tuple[str, ...]) -> tuple[str, float] | None:
        r = self.db.execute(f"SELECT id, kind, arg FROM faults WHERE kind IN ({','.join('?' * len(kinds))})"
                            " ORDER BY id LIMIT 1", kinds).fetchone()
        if r is None:
            return None
        self.db.execute("DELETE FROM faults WHERE id = ?", (r[0],))
        return r[1], r[2]

    def _event_rows(self) -> list[tuple[str, int, str, float]]:
        return self.db.execute("SELECT symbol, bar, kind, arg FROM market_events").fetchall()

    def _add_event(self, symbol: str, bar: int, kind: str, arg: float) -> None:
        self.db.execute("INSERT INTO market_events VALUES (?,?,?,?)", (symbol, bar, kind, arg))

    def _insert_order(self, cid: str, symbol: str, side: str, typ: str, qty: str, price: str | None, locked: str,
                      created: float, bar: int, trigger: str | None, hold_until: float | None) -> int:
        """A new OPEN order (nothing filled); returns its id."""
        return self.db.execute(
            "INSERT INTO orders (client_id, symbol, side, type, qty, price, status, filled, avg_price, locked, created,"
            " bar, trigger, hold_until) VALUES (?,?,?,?,?,?,'OPEN','0',NULL,?,?,?,?,?)",
            (cid, symbol, side, typ, qty, price, locked, created, bar, trigger, hold_until)).lastrowid

    def _order(self, oid: int) -> tuple:
        return self.db.execute("SELECT * FROM orders WHERE id = ?", (oid,)).fetchone()

    def _order_by_cid(self, cid: str) -> tuple | None:
        return self.db.execute("SELECT * FROM orders WHERE client_id = ?", (cid,)).fetchone()

    def _order_rows(self) -> list[tuple]:
        return self.db.execute("SELECT * FROM orders ORDER BY id").fetchall()

    def _open_rows(self, symbol: str | None = None, upto_bar: int | None = None) -> list[tuple]:
        """OPEN and PARTIALLY_FILLED orders in id order, of `symbol` placed at bar `upto_bar` or before if given."""
        if symbol is None:
            return self.db.execute("SELECT * FROM orders WHERE status IN ('OPEN','PARTIALLY_FILLED') ORDER BY id").fetchall()
        return self.db.execute("SELECT * FROM orders WHERE symbol = ? AND status IN ('OPEN','PARTIALLY_FILLED')"
                               " AND bar <= ? ORDER BY id", (symbol, upto_bar)).fetchall()

    def _set_order(self, oid: int, **cols: str) -> None:
        """Set columns of order `oid` (status, filled, avg_price, locked)."""
        self.db.execute(f"UPDATE orders SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?", (*cols.values(), oid))

    def _trade_count(self, oid: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM trades WHERE order_id = ?", (oid,)).fetchone()[0]

    def _insert_trade(self, *row) -> None:
        """(trade_id, order_id, client_id, symbol, side, qty, price, fee, ts, fee_asset)"""
        self.db.execute("INSERT INTO trades (trade_id, order_id, client_id, symbol, side, qty, price, fee, ts, fee_asset)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?)", row)

    def _trade_rows(self, client_id: str) -> list[tuple]:
        return self.db.execute(f"SELECT {_TRADE_COLS} FROM trades WHERE client_id = ? ORDER BY rowid",
                               (client_id,)).fetchall()

    def _recent_trade_rows(self, symbol: str, since: float | None, limit: int) -> list[tuple]:
        if since is None:
            return self.db.execute(f"SELECT {_TRADE_COLS} FROM trades WHERE symbol = ?"
                                   " ORDER BY ts DESC, rowid DESC LIMIT ?", (symbol, limit)).fetchall()[::-1]
        return self.db.execute(f"SELECT {_TRADE_COLS} FROM trades WHERE symbol = ? AND ts >= ?"
                               " ORDER BY ts, rowid LIMIT ?", (symbol, since, limit)).fetchall()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ---- faults -----------------------------------------------------------
    def inject(self, kind: str, count: int = 1, arg: float = 0.0) -> None:
        """Queue `count` faults of `kind` (see module doc). Persisted; usable from another process."""
        with self._tx():
            for _ in range(count):
                self._add_fault(kind, arg)

    # ---- market -----------------------------------------------------------
    def feed(self, symbol: str, bar: Bar) -> None:
        """Manual (backtest) mode: the next bar has closed; resting orders may fill against it."""
        idx = self._manual_bar[symbol][0] + 1 if symbol in self._manual_bar else 0
        self._manual_bar[symbol] = (idx, bar)
        if self._open:
            with self._tx():
                self._process_bar(symbol, idx, bar)

    def _index(self) -> int:
        return int((self.clock() - self.t0) / self.bar_seconds)

    def _bar(self, symbol: str, i: int) -> Bar | None:
        raw = self.sources[symbol].get(i)
        if raw is None:
            return None
        o, h, low, c = raw
        scale = 1.0
        spike = 1.0
        for kind, bar_at, arg in self._events(symbol):
            if kind == "gap" and i >= bar_at:
                scale *= 1.0 + arg / 100.0
            elif kind == "vol_spike" and bar_at <= i < bar_at + 20:
                spike = max(spike, arg)
        if spike != 1.0:
            h, low = c + (h - c) * spike + abs(c - o) * spike, max(c * 0.05, low - (c - low) * spike - abs(c - o) * spike)
        return Bar(self.t0 + i * self.bar_seconds, o * scale, max(h * scale, o * scale, c * scale),
                   min(low * scale, o * scale, c * scale), c * scale, 1.0)

    def _events(self, symbol: str) -> list[tuple[str, int, float]]:
        ev = getattr(self, "_ev_cache", None)
        if ev is None:
            ev = self._ev_cache = {}
            for s, b, k, a in self._event_rows():
                ev.setdefault(s, []).append((k, b, a))
        return ev.get(symbol, [])

    def _arm_market_faults(self) -> None:
        """Turn queued gap/vol_spike faults into market events starting at the next bar."""
        while True:
            f = self._take_fault(("gap", "vol_spike"))
            if f is None:
                return
            nxt = self._index() + 1
            for s in self.instruments:
                self._add_event(s, nxt, f[0], f[1])
            self._ev_cache = None

    def _last(self, symbol: str) -> tuple[Decimal, float, int]:
        """Last price, its time, and the current (forming) bar index."""
        if self.manual:
            if symbol not in self._manual_bar:
                raise BadExchangeData(f"{symbol}: no price yet")
            idx, bar = self._manual_bar[symbol]
            return Decimal(repr(bar.close)), bar.ts + self.bar_seconds, idx + 1
        i = self._index()
        bar = self._bar(symbol, max(i - 1, 0))
        if bar is None:
            raise BadExchangeData(f"{symbol}: the price series has ended")
        return Decimal(repr(bar.close)), bar.ts + self.bar_seconds, i

    def _sync(self) -> None:
        """Process closed bars since the last call: resting orders fill, partial remainders complete,
        an expired dead-man's switch cancels what was still open at its deadline.

        Cheap when there is nothing to do (no open orders, no queued market faults, no new
        bar, no expired switch): no write transaction, so read-only calls do not fsync."""
        if self.manual:
            return
        upto = self._index() - 1
        with self._lock:
            armed = self._has_fault(("gap", "vol_spike"))
            deadline = self._meta(_SWITCH)
            expired = deadline is not None and self.clock() >= deadline
            if not armed and not expired and (not self._open or self._processed == upto):
                self._processed = upto if not self._open else self._processed
                return
            with self._tx():
                self._arm_market_faults()
                done = upto - 1 if self._processed is None else self._processed
                for i in range(done + 1, upto + 1):
                    if expired and self.t0 + (i + 1) * self.bar_seconds > deadline:
                        self._expire_switch()           # bars that closed before the deadline came first
                        expired = False
                    for s in self.instruments:
                        bar = self._bar(s, i)
                        if bar is not None:
                            self._process_bar(s, i, bar)
                if expired:
                    self._expire_switch()
                self._set_meta("processed", upto)
            self._processed = upto

    def _expire_switch(self) -> None:
        """The dead-man's switch ran out: cancel every open order of the account, stops included."""
        for r in self._open_rows():
            self._cancel_row(r)
        self._set_meta(_SWITCH, None)

    def _process_bar(self, symbol: str, i: int, bar: Bar) -> None:
        for r in self._open_rows(symbol, i):
            oid, cid, _, side, typ, qty, price, _, filled, _, locked, _, obar, trigger, hold_until = r
            side, qty, filled = Side(side), Decimal(qty), Decimal(filled)
            remaining = qty - filled
            if obar > i:   # placed after this bar closed
                continue
            if typ == "market" and hold_until is not None and bar.ts + self.bar_seconds < hold_until:
                continue   # a held market (fault `hold`): not filled yet
            if typ == "market":
                px = self._slipped(Decimal(repr(bar.close)), side, remaining)
            elif typ == "stop":
                tp = Decimal(trigger)
                if bar.low > float(tp):
                    continue
                px = self._slipped(min(tp, Decimal(repr(bar.open))), side, remaining)
            else:
                lp = Decimal(price)
                crossed = bar.low <= float(lp) if side is Side.BUY else bar.high >= float(lp)
                if not crossed:
                    continue
                px = lp
            self._execute(oid, cid, symbol, side, remaining, px, bar.ts + self.bar_seconds, Decimal(locked))

    # ---- accounting -------------------------------------------------------
    def _slipped(self, last: Decimal, side: Side, qty: Decimal) -> Decimal:
        px = last * (1 + self.slippage) if side is Side.BUY else last * (1 - self.slippage)
        return px.quantize(Decimal("1e-8"))

    def _execute(self, oid: int, cid: str, symbol: str, side: Side, qty: Decimal, px: Decimal,
                 ts: float, locked: Decimal) -> None:
        """Fill `qty` at `px`: move balances, record the trade, update the order."""
        inst = self.instruments[symbol]
        notional = qty * px
        qf, ql = self._bal(inst.quote)
        bf, bl = self._bal(inst.base)
        o = self._order(oid)
        total, filled, prev_avg = Decimal(o[5]), Decimal(o[8]), o[9]
        share = locked * qty / (total - filled) if total > filled else locked
        if side is Side.BUY:       # the fee comes out of the coin received: base
            fee, fee_asset = (qty * self.fee_rate).quantize(Decimal("1e-8")), inst.base
            self._put(inst.quote, qf + share - notional, ql - share)
            self._put(inst.base, bf + qty - fee, bl)
        else:
            fee, fee_asset = (notional * self.fee_rate).quantize(Decimal("1e-8")), inst.quote
            self._put(inst.base, bf + share - qty, bl - share)
            self._put(inst.quote, qf + notional - fee, ql)
        n = self._trade_count(oid)
        self._insert_trade(f"T{oid}-{n + 1}", oid, cid, symbol, side.value, str(qty), str(px), str(fee), ts, fee_asset)
        new_filled = filled + qty
        avg = ((Decimal(prev_avg) * filled if prev_avg else ZERO) + notional) / new_filled
        status = OrderStatus.FILLED if new_filled >= total else OrderStatus.PARTIALLY_FILLED
        self._set_order(oid, filled=str(new_filled), avg_price=str(avg.quantize(Decimal("1e-8"))), status=status.value,
                        locked=str(locked - share))
        if status is OrderStatus.FILLED:
            self._open = max(0, self._open - 1)

    # ---- API --------------------------------------------------------------
    def ticker(self, symbol: str) -> tuple[Decimal, float]:
        self._sync()
        with self._tx():
            garbage = self._take_fault(("garbage",))
        if garbage:
            raise BadExchangeData(f"{symbol}: ticker price NaN")
        price, _, _ = self._last(symbol)
        return price, (self.clock() if not self.manual else self._last(symbol)[1])

    def candles(self, symbol: str, since: float) -> list[Bar]:
        """Closed bars with ts > since (at most 500)."""
        self._sync()
        if self.manual:
            return [self._manual_bar[symbol][1]] if symbol in self._manual_bar and self._manual_bar[symbol][1].ts > since else []
        cur = self._index()
        first = max(0, int(math.floor((since - self.t0) / self.bar_seconds)) + 1, cur - 500)
        out = []
        for i in range(first, cur):
            b = self._bar(symbol, i)
            if b is not None and b.ts > since:
                out.append(b)
        return out

    def balances(self) -> AccountView:
        self._sync()
        with self._lock:
            rows = self._balance_rows()
        return AccountView({a: Balance(Decimal(f), Decimal(f) + Decimal(lk)) for a, f, lk in rows})

    def create_order(self, client_id: str, symbol: str, side: Side, order_type: OrderType,
                     qty: Decimal, price: Decimal | None, trigger: Decimal | None = None) -> ExchangeOrder:
        if not CLIENT_ID_RE.match(client_id or ""):
            raise OrderRejected(f"illegal client order id {client_id!r} (must match {CLIENT_ID_RE.pattern})")
        self._sync()
        if symbol not in self.instruments:
            raise OrderRejected(f"unknown symbol {symbol}")
        with self._tx():
            if self._order_by_cid(client_id) is not None:
                raise DuplicateClientOrderId(f"duplicate client order id {client_id}")
            fault = self._take_fault(("timeout_lost", "timeout_accepted", "reject", "duplicate_response", "partial")
                                     + (("hold",) if order_type is OrderType.MARKET else ()))
        kind = fault[0] if fault else None
        if kind == "timeout_lost":
            raise ExchangeTimeout("paper: request timed out (never arrived)")
        if kind == "reject":
            raise OrderRejected("paper: injected reject")
        with self._tx():
            order = self._accept(client_id, symbol, side, order_type, qty, price, trigger,
                                 fraction=Decimal(repr(fault[1])) if kind == "partial" else None,
                                 hold_s=fault[1] if kind == "hold" else None)
        if kind == "timeout_accepted":
            raise ExchangeTimeout("paper: response lost after the order was accepted")
        if kind == "duplicate_response":
            raise DuplicateClientOrderId(f"duplicate client order id {client_id}")
        return order

    def _accept(self, cid: str, symbol: str, side: Side, typ: OrderType, qty: Decimal, price: Decimal | None,
                trigger: Decimal | None, fraction: Decimal | None, hold_s: float | None = None) -> ExchangeOrder:
        inst = self.instruments[symbol]
        if qty <= 0 or qty % inst.step_size != 0 or qty < inst.min_qty or qty > inst.max_qty:
            raise OrderRejected(f"invalid quantity {qty}")
        if typ is OrderType.LIMIT and (price is None or price <= 0 or price % inst.tick_size != 0):
            raise OrderRejected(f"invalid price {price}")
        last, ts, idx = self._last(symbol)
        if typ is OrderType.STOP:
            if side is not Side.SELL:
                raise OrderRejected("stop orders are stop-loss sells (spot, long only)")
            if trigger is None or trigger <= 0 or trigger % inst.tick_size != 0:
                raise OrderRejected(f"invalid stop trigger {trigger}")
            if trigger >= last:
                raise OrderRejected(f"stop trigger {trigger} would trigger immediately (last {last})")
        ref = price if typ is OrderType.LIMIT else last
        if side is Side.BUY:       # the fee is taken from the base coin received: quote pays the notional only
            need = qty * ref * (1 + (self.slippage if typ is OrderType.MARKET else 0))
            free, locked = self._bal(inst.quote)
            if need > free:
                raise OrderRejected(f"insufficient {inst.quote}: need {need:.2f}, free {free:.2f}")
            self._put(inst.quote, free - need, locked + need)
        else:
            need = qty
            free, locked = self._bal(inst.base)
            if need > free:
                raise OrderRejected(f"insufficient {inst.base}: need {need}, free {free}")
            self._put(inst.base, free - need, locked + need)
        oid = self._insert_order(cid, symbol, side.value, typ.value, str(qty), None if price is None else str(price),
                                 str(need), self.clock(), idx, None if trigger is None else str(trigger),
                                 None if hold_s is None else self.clock() + hold_s)
        self._open += 1
        if typ is OrderType.MARKET and hold_s is None:
            now_qty = qty
            if fraction is not None:
                now_qty = (qty * fraction / inst.step_size).to_integral_value(rounding=ROUND_DOWN) * inst.step_size
            if now_qty > 0:
                self._execute(oid, cid, symbol, side, now_qty, self._slipped(last, side, now_qty), ts, need)
        return self._order_row(oid)

    def _order_row(self, oid: int) -> ExchangeOrder:
        return _to_order(self._order(oid))

    def fetch_order(self, symbol: str, client_id: str) -> ExchangeOrder:
        self._sync()
        with self._lock:
            r = self._order_by_cid(client_id)
            if self._has_fault(("lookup_miss",)):
                with self._tx():
                    if self._take_fault(("lookup_miss",)):
                        r = None
        if r is None:
            raise OrderNotFound(client_id)
        return _to_order(r)

    def cancel_order(self, symbol: str, client_id: str) -> ExchangeOrder:
        self._sync()
        with self._tx():
            r = self._order_by_cid(client_id)
            if r is None:
                raise OrderNotFound(client_id)
            self._cancel_row(r)
            return self._order_row(r[0])

    def _cancel_row(self, r) -> None:
        """Cancel one order row if it is still open: its locked funds become free again."""
        if r[7] in ("OPEN", "PARTIALLY_FILLED"):
            inst = self.instruments[r[2]]
            locked = Decimal(r[10])
            asset = inst.quote if r[3] == "buy" else inst.base
            free, lk = self._bal(asset)
            self._put(asset, free + locked, lk - locked)
            self._set_order(r[0], status="CANCELED", locked="0")
            self._open = max(0, self._open - 1)

    def cancel_all_after(self, timeout_s: float) -> None:
        """Arm the dead-man's switch to fire `timeout_s` from now (arming again refreshes it), or
        disarm it with 0. A switch that has already expired fires first: a late refresh revives nothing."""
        self._sync()
        with self._tx():
            lost = self._take_fault(("switch_timeout",))
            if not lost:
                self._set_meta(_SWITCH, self.clock() + timeout_s if timeout_s > 0 else None)
        if lost:
            raise ExchangeTimeout("paper: dead-man's switch request timed out (not applied)")

    @property
    def supports_dead_man(self) -> bool:
        return True

    def dead_man_deadline(self) -> float | None:
        """When the armed switch fires (None: disarmed). Inspection for tests and status."""
        with self._lock:
            return self._meta(_SWITCH)

    def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        self._sync()
        with self._lock:
            rows = self._open_rows()
        return [_to_order(r) for r in rows if symbol is None or r[2] == symbol]

    def order_trades(self, symbol: str, client_id: str, exchange_id: str = "") -> list[Fill]:
        self._sync()
        with self._lock:
            rows = self._trade_rows(client_id)
        return [_to_fill(r) for r in rows]

    def recent_trades(self, symbol: str, since: float | None, limit: int = 500) -> list[Fill]:
        """The account's trades on `symbol`, oldest first: the first `limit` at or after `since`,
        or with no `since` the newest `limit` (Binance's myTrades with and without startTime)."""
        self._sync()
        with self._lock:
            rows = self._recent_trade_rows(symbol, since, limit)
        return [_to_fill(r) for r in rows]

    @property
    def supports_stops(self) -> bool:
        return True

    # ---- inspection (tests, status) ----------------------------------------
    def all_orders(self) -> list[ExchangeOrder]:
        with self._lock:
            return [_to_order(r) for r in self._order_rows()]


_TRADE_COLS = "trade_id, client_id, symbol, side, qty, price, fee, ts, fee_asset, order_id"


def _to_fill(r) -> Fill:
    return Fill(r[0], r[1], r[2], Side(r[3]), Decimal(r[4]), Decimal(r[5]), Decimal(r[6]), r[7],
                fee_asset=r[8] or r[2].partition("/")[2], order_id=str(r[9]))


def _to_order(r) -> ExchangeOrder:
    oid, cid, symbol, side, typ, qty, price, status, filled, avg, _, created, _, trigger, _ = r
    return ExchangeOrder(str(oid), cid, symbol, Side(side), OrderType(typ), Decimal(qty),
                         None if price is None else Decimal(price), OrderStatus(status), Decimal(filled),
                         None if avg is None else Decimal(avg), created,
                         None if trigger is None else Decimal(trigger))
