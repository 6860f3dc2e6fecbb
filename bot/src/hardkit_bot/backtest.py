"""Backtest / replay: historical bars through the live engine, risk guard and paper exchange.

Nothing is re-implemented for the backtest: the Engine, OrderManager, risk
pipeline, breakers and PaperExchange (in manual mode, fed bar by bar) are the
production objects; the ledger and the paper account live in memory. The clock
is the bar clock, so daily-loss anchoring and stale-data checks behave as live.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from . import audit
from .config import Config
from .engine import Engine
from .exchange.paper import PaperExchange
from .model import Bar
from .store import Store


class ReplayLedger(Store):
    """The ledger for replays: every `tx()` joins one open transaction instead of
    committing on its own.

    A live ledger commits (and fsyncs) each change before the bot acts on it; a replay
    has nothing to survive: its ledger is in memory (or a scratch file) and a failure
    aborts the replay. The same SQL, audit records and hash chain are written, with three
    differences, all of them only here (`Store`, the live ledger, has none of them):

    - no BEGIN/COMMIT pair per change: `commit()` ends the batch (and starts the next one),
      `close()` commits the last; synchronous=OFF;
    - the chain's head is kept in memory instead of read back per record;
    - the audit records of a batch are hashed as they are made (so each links to the one
      before) but inserted together, with one `executemany`, just before the batch commits,
      in the same transaction: a crash mid-batch loses the batch's changes and its records
      alike, and leaves the ledger as the last commit left it (chain intact).

    Anything that reads the audit table through this object (`audit_head`, `verify_audit`)
    sees the pending records first. Never use this class for a live bot.
    """

    def __init__(self, path: str | Path = ":memory:", clock=time.time):
        super().__init__(path, clock)
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("BEGIN IMMEDIATE")
        self._head: tuple[int, str] | None = None   # the audit chain's head, once read (audit())
        self._pending: list[audit.Row] = []         # this batch's records, not yet inserted
        self._batching = True

    @contextmanager
    def tx(self) -> Iterator:
        if not getattr(self, "_batching", False):   # Store.__init__'s own first transaction
            with super().tx() as c:
                yield c
            return
        with self._lock:
            yield self.conn

    def audit(self, kind: str, payload: dict) -> None:
        """The chain's head is kept in memory, not read back per record: nothing else writes
        this ledger while it batches (the live Store reads it, as another process may append)."""
        if not getattr(self, "_batching", False):
            return super().audit(kind, payload)
        if self._head is None:
            self._head = audit.head(self.conn)
        row = audit.record(self._head, self.clock(), kind, payload, self._key)
        self._pending.append(row)
        self._head = row[0], row[5]

    def _flush(self) -> None:
        """Insert the batch's audit records (the caller holds the lock, inside the batch's transaction)."""
        if self._pending:
            audit.insert_rows(self.conn, self._pending)
            self._pending.clear()

    def audit_head(self) -> tuple[int, str]:
        with self._lock:
            self._flush()
            return super().audit_head()

    def verify_audit(self, key: bytes | None) -> audit.VerifyResult:
        with self._lock:
            self._flush()
            return super().verify_audit(key)

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


def run(cfg: Config, bars: list[Bar], bar_seconds: float = 60.0, *, batched: bool = True) -> BacktestResult:
    """Replay `bars` from a fresh paper account. `batched=False` commits every ledger change
    on its own, as the live bot does (for comparison: same results, slower)."""
    sym = cfg.instruments[0].symbol
    now = [bars[0].ts if bars else 0.0]
    clock = lambda: now[0]  # noqa: E731
    cfg = replace(cfg, bot={**cfg.bot, "equity_snapshot_s": 86400.0})
    store = ReplayLedger(":memory:", clock=clock) if batched else Store(":memory:", clock=clock)
    ex = PaperExchange(":memory:", {i.symbol: i for i in cfg.instruments}, quote=cfg.bot["quote"],
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
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    if batched:
        store.commit()      # the last batch, with its audit records: the replay's ledger is complete
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

