"""The replay's batched ledger: same results and the same audit chain, one transaction instead of one per change.

Only replays use it; the live ledger still commits every change on its own (the crash
tests in test_bot_crash.py hold that path to it)."""
import logging
import sqlite3
from dataclasses import replace
from decimal import Decimal as D

import pytest

from hardkit_bot import audit, backtest
from hardkit_bot.backtest import ReplayLedger
from hardkit_bot.config import parse
from hardkit_bot.exchange.market import generate
from hardkit_bot.model import Fill, Intent, OrderStatus, Side, TradingState
from hardkit_bot.risk.pipeline import Denial, DenialCode
from hardkit_bot.store import LOSS_STREAK, Store

from bot_helpers import config_text


@pytest.mark.parametrize("as_live", [{"batched": False}, {"sqlite_exchange": True}],
                         ids=["one-commit-per-change", "paper-exchange-in-sqlite"])
def test_a_replay_s_fast_paths_give_the_same_result_as_the_running_bot_s(as_live):
    """The batched ledger against one commit per change, and the replay's in-memory paper exchange
    (`ReplayPaperExchange`) against the SQLite one: the same fills, decisions and state."""
    cfg = parse(config_text())
    cfg = replace(cfg, strategy={**cfg.strategy, "band_atr": 0.2})
    bars = generate(8000, seed=5)
    logging.disable(logging.INFO)
    try:
        a, b = backtest.run(cfg, bars), backtest.run(cfg, bars, **as_live)
    finally:
        logging.disable(logging.NOTSET)
    assert a.trades > 10
    assert (a.trades, a.denials, a.end_equity, a.final_state, a.state_reason, a.decisions) == \
        (b.trades, b.denials, b.end_equity, b.final_state, b.state_reason, b.decisions)


def test_a_batch_becomes_visible_at_commit_with_an_intact_audit_chain(tmp_path, clock):
    path = tmp_path / "scratch.sqlite"
    led = ReplayLedger(path, clock)
    cid = led.insert_intent(Intent("k1", "BTC/USDT", Side.BUY, D("1"), D("100")), "hk1")
    led.update_order(cid, OrderStatus.OPEN, sent=True)
    led.apply_fill(Fill("t1", cid, "BTC/USDT", Side.BUY, D("1"), D("100"), D("0.1"), clock()))
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0      # one open transaction, not yet committed
    led.commit()
    assert other.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1
    led.close()
    store = Store(path, clock)
    assert store.positions()["BTC/USDT"].qty == D("1")
    v = audit.verify(store.conn)
    assert v.ok and v.records >= 3


def test_the_batched_ledger_keeps_the_chain_head_in_memory_and_the_chain_verifies(tmp_path, clock):
    """The replay's ledger reads the chain's head once (it is the chain's only writer) instead of
    once per record: it must continue a chain another writer started, across its commits."""
    path = tmp_path / "scratch.sqlite"
    first = Store(path, clock)
    first.record_decision(Intent("before", "BTC/USDT", Side.BUY, D("1"), D("100")), None)
    first.close()
    led = ReplayLedger(path, clock)
    statements = []
    led.conn.set_trace_callback(statements.append)
    for k in range(30):
        led.record_decision(Intent(f"k{k}", "BTC/USDT", Side.BUY, D("1"), D("100")), None)
        if k % 10 == 9:
            led.commit()
    led.conn.set_trace_callback(None)
    led.close()
    assert sum("FROM audit ORDER BY seq DESC" in s for s in statements) == 1   # read once, not per record
    v = audit.verify(Store(path, clock).conn)
    assert v.ok, v.problem
    assert v.records == 1 + 30     # the first writer's record, then the batch's


def test_a_batch_audit_records_are_inserted_at_its_commit_and_a_crash_mid_batch_leaves_the_last_commit(tmp_path, clock):
    """The replay's ledger hashes each record as it is made but inserts a batch's records together,
    in the batch's own transaction, just before it commits. A process that dies mid-batch leaves the
    file as the last commit left it: its changes and its records both gone, the chain intact."""
    path = tmp_path / "scratch.sqlite"
    led = ReplayLedger(path, clock)
    statements = []
    led.conn.set_trace_callback(statements.append)
    for k in range(5):
        led.record_decision(Intent(f"k{k}", "BTC/USDT", Side.BUY, D("1"), D("100")), None)
    assert not any(s.startswith("INSERT INTO audit") for s in statements)    # pending, not yet written
    assert led.audit_head()[0] == 5                                          # but reads see them
    led.commit()
    for k in range(5, 8):
        led.record_decision(Intent(f"k{k}", "BTC/USDT", Side.BUY, D("1"), D("100")), None)
    led.conn.close()                     # died mid-batch: no commit, no flush
    store = Store(path, clock)
    assert store.conn.execute("SELECT COUNT(*) FROM risk_decisions").fetchone()[0] == 5
    v = audit.verify(store.conn)
    assert v.ok and v.records == 5, v.problem


def test_the_live_ledger_writes_each_audit_record_in_the_transaction_of_its_change(tmp_path, clock):
    """What the replay batches, the live ledger must not: a committed change has its record in the
    table, its head read back from the table (another process may append)."""
    store = Store(tmp_path / "ledger.sqlite", clock)
    statements = []
    store.conn.set_trace_callback(statements.append)
    with store.tx():
        store.audit("probe", {"n": 1})
        assert store.conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 1
    assert sum("FROM audit ORDER BY seq DESC" in s for s in statements) == 1
    assert not isinstance(store, ReplayLedger)
    other = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert other.execute("SELECT kind FROM audit").fetchall() == [("probe",)]


def test_a_replay_leaves_every_audit_record_in_its_ledger(monkeypatch):
    """The last batch is committed at the end of a run: no record is left pending."""
    made = []
    monkeypatch.setattr(backtest, "ReplayLedger", lambda *a, **k: made.append(ReplayLedger(*a, **k)) or made[-1])
    cfg = parse(config_text())
    logging.disable(logging.INFO)
    try:
        backtest.run(replace(cfg, strategy={**cfg.strategy, "band_atr": 0.2}), generate(3000, seed=5))
    finally:
        logging.disable(logging.NOTSET)
    [led] = made
    assert led._pending == [] and led._later == []
    v = audit.verify(led.conn)
    assert v.ok and v.records > 10, v.problem


def test_the_replay_ledger_leaves_the_rows_and_the_chain_the_live_one_does(tmp_path, clock, monkeypatch):
    """The replay's ledger queues the rows of risk decisions and stops and chains the audit records at
    its commit: after the same calls, every table holds what the live ledger's holds, hashes included,
    and a read of stops or decisions before the commit sees the queued rows."""
    monkeypatch.setattr("hardkit_bot.store.secrets.choice", lambda seq: seq[0])   # the same session epoch in both

    def calls(led):
        led.record_decision(Intent("k1", "BTC/USDT", Side.BUY, D("1"), D("100")), None)
        led.record_decision(Intent("k2", "BTC/USDT", Side.BUY, D("9"), D("100")),
                            Denial(DenialCode.INVALID_QUANTITY, {"qty": "9", "why": 'a "quoted" text'}))
        cid = led.insert_intent(Intent("k1", "BTC/USDT", Side.BUY, D("1"), D("100")), "hk1")
        led.apply_fill(Fill("t1", cid, "BTC/USDT", Side.BUY, D("1"), D("100"), D("0.001"), clock(), fee_asset="BTC"))
        led.set_stop("BTC/USDT", D("95"), D("110"))
        clock.advance(1)
        led.set_stop("BTC/USDT", D("96"))            # the target kept (COALESCE with the queued row)
        led.set_meta("equity_peak", 10000.5, audit_kind="peak")
        assert led.stops() == {"BTC/USDT": (D("96"), D("110"))}
        assert [r["intent_key"] for r in led.decisions()] == ["k1", "k2"]
        led.set_stop("ETH/USDT", D("10"))
        led.set_stop("ETH/USDT", None)
        # fills, positions and the loss streak (the replay's ledger keeps what it wrote in memory): a
        # duplicate, a losing and a winning round trip, a reset of the streak, another loss
        seen = [led.apply_fill(Fill("t1", cid, "BTC/USDT", Side.BUY, D("1"), D("100"), D("0.001"), clock(),
                                    fee_asset="BTC"))]
        for n, (side, qty, px) in enumerate([(Side.SELL, "0.999", "90"), (Side.BUY, "2", "50"), (Side.SELL, "1", "60"),
                                             (Side.SELL, "1", "70"), (Side.BUY, "1", "80")]):
            cid = led.insert_intent(Intent(f"r{n}", "BTC/USDT", side, D(qty), D(px),
                                       stop_price=D(px) - 5 if side is Side.BUY else None), "hk1")
            seen.append(led.apply_fill(Fill(f"r{n}", cid, "BTC/USDT", side, D(qty), D(px), D("0.01"), clock())))
            seen.append((led.positions(), led.get_meta(LOSS_STREAK, 0)))
            led.update_order(cid, OrderStatus.OPEN, exchange_order_id=f"e{n}", sent=True)
            clock.advance(1)
            led.update_order(cid, OrderStatus.FILLED if n % 2 else OrderStatus.UNKNOWN, error="x" if n else None)
            seen.append((tuple(led.order(cid)), dict(led.order(cid)), [tuple(r) for r in led.live_orders()],
                         led.entry_plan("BTC/USDT"), led.entry_plan("ETH/USDT")))
            if n == 1:
                led.set_meta(LOSS_STREAK, 0, audit_kind="reset")
                seen.append(led.get_meta(LOSS_STREAK))
        led.apply_fill(Fill("s1", cid, "BTC/USDT", Side.SELL, D("1"), D("40"), D("0"), clock()))
        seen.append((led.positions(), led.get_meta(LOSS_STREAK, 0)))
        payload = {"orders": ["a"], "n": 1}
        with led.tx():
            led.audit("list", payload)   # encoded as it is now, not as it is at the commit
        payload["orders"].append("b")
        return seen

    tables = ("stops", "risk_decisions", "audit", "orders", "fills", "positions", "meta", "sqlite_sequence")
    rows, reads = [], []
    start = clock.t
    for led in (Store(tmp_path / "live.sqlite", clock), ReplayLedger(tmp_path / "replay.sqlite", clock)):
        clock.t = start
        reads.append(calls(led))
        if isinstance(led, ReplayLedger):
            led.commit()
        rows.append({t: sorted(tuple(r) for r in led.conn.execute(f"SELECT * FROM {t} ORDER BY rowid"))
                     if t == "sqlite_sequence" else   # (its rows' own order: which table's first row came first)
                     [tuple(r) for r in led.conn.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in tables})
    assert rows[0] == rows[1] and reads[0] == reads[1]
    assert reads[0][0] is None and reads[0][-1][1] == 1 and D(reads[0][-1][0]["BTC/USDT"].qty) == 0
    assert rows[0]["audit"][-1][3] == '{"n":1,"orders":["a"]}'
    assert len(rows[0]["audit"]) >= 10 and rows[0]["stops"] == [("BTC/USDT", "96", "110", start + 1)]
    assert all(audit.verify(sqlite3.connect(tmp_path / f)).ok for f in ("live.sqlite", "replay.sqlite"))


def test_the_replay_ledger_reads_the_loss_streak_again_after_a_reset(clock):
    """The replay's ledger keeps the streak its fills wrote; a new risk epoch (set_state with meta) or any
    set_meta makes it read the stored one again."""
    led = ReplayLedger(":memory:", clock)
    for n, px in enumerate(("90", "80")):          # two losing round trips
        cid = led.insert_intent(Intent(f"b{n}", "BTC/USDT", Side.BUY, D("1"), D("100")), "hk1")
        led.apply_fill(Fill(f"b{n}", cid, "BTC/USDT", Side.BUY, D("1"), D("100"), D("0"), clock()))
        cid = led.insert_intent(Intent(f"s{n}", "BTC/USDT", Side.SELL, D("1"), D(px)), "hk1")
        led.apply_fill(Fill(f"s{n}", cid, "BTC/USDT", Side.SELL, D("1"), D(px), D("0"), clock()))
    assert led.get_meta(LOSS_STREAK) == 2
    led.set_state(TradingState.ACTIVE, "reset", clock(), TradingState.HALTED, meta={LOSS_STREAK: 0})
    assert led.get_meta(LOSS_STREAK) == 0
    led.set_state(TradingState.ACTIVE, "reset", clock(), TradingState.HALTED, meta={LOSS_STREAK: None})
    assert led.get_meta(LOSS_STREAK, "absent") == "absent"
    cid = led.insert_intent(Intent("b9", "BTC/USDT", Side.BUY, D("1"), D("100")), "hk1")
    led.apply_fill(Fill("b9", cid, "BTC/USDT", Side.BUY, D("1"), D("100"), D("0"), clock()))
    cid = led.insert_intent(Intent("s9", "BTC/USDT", Side.SELL, D("1"), D("90")), "hk1")
    led.apply_fill(Fill("s9", cid, "BTC/USDT", Side.SELL, D("1"), D("90"), D("0"), clock()))   # queued: 1
    led.set_meta("equity_peak", 1.0)                     # another key: the queued streak stays queued
    led.set_state(TradingState.ACTIVE, "reset", clock(), TradingState.HALTED, meta={LOSS_STREAK: 0})
    led.commit()                                         # the queued 1 was written before the reset's 0
    assert led.get_meta(LOSS_STREAK) == 0 and Store.get_meta(led, LOSS_STREAK) == 0
