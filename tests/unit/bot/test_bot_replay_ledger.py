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
