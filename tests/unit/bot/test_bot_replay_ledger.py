"""The replay's batched ledger: same results and the same audit chain, one transaction instead of one per change.

Only replays use it; the live ledger still commits every change on its own (the crash
tests in test_bot_crash.py hold that path to it)."""
import logging
import sqlite3
from dataclasses import replace
from decimal import Decimal as D

from hardkit_bot import audit, backtest
from hardkit_bot.backtest import ReplayLedger
from hardkit_bot.config import parse
from hardkit_bot.exchange.market import generate
from hardkit_bot.model import Fill, Intent, OrderStatus, Side
from hardkit_bot.store import Store

from bot_helpers import config_text


def test_batched_replay_gives_the_same_result_as_one_commit_per_change():
    cfg = parse(config_text())
    cfg = replace(cfg, strategy={**cfg.strategy, "band_atr": 0.2})
    bars = generate(8000, seed=5)
    logging.disable(logging.INFO)
    try:
        a, b = backtest.run(cfg, bars, batched=True), backtest.run(cfg, bars, batched=False)
    finally:
        logging.disable(logging.NOTSET)
    assert a.trades > 10
    assert (a.trades, a.denials, a.end_equity, a.final_state, a.state_reason) == \
        (b.trades, b.denials, b.end_equity, b.final_state, b.state_reason)


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
    assert led._pending == []
    v = audit.verify(led.conn)
    assert v.ok and v.records > 10, v.problem
