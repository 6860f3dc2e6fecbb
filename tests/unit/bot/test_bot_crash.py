"""Fault injection with real processes: SIGKILL the bot at each step of the order lifecycle.

The paper exchange keeps its state in its own SQLite file, so it survives the
bot's death exactly as a venue would. After the kill the bot is restarted
(without the crash hook) and must reconcile: the exchange ends with no duplicate
and no lost order, and the ledger agrees with the exchange to the trade.
"""
import signal
import sqlite3
from decimal import Decimal as D

import pytest

from hardkit_bot.config import parse
from hardkit_bot.exchange.paper import PaperExchange

from bot_helpers import config_text


def prepare(bot, faults=()):
    text = config_text(loop=0.05, bar=0.02, grace=0.5)
    bot.write_config(text)
    bot.state.mkdir(parents=True)
    cfg = parse(text)
    ex = PaperExchange(bot.state / "paper-exchange.sqlite", {i.symbol: i for i in cfg.instruments}, bar_seconds=0.02)
    for kind, count, arg in faults:
        ex.inject(kind, count, arg)
    ex.close()


def rows(path, sql):
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def assert_no_duplicate_no_lost(bot):
    ledger, paper = bot.state / "ledger.sqlite", bot.state / "paper-exchange.sqlite"
    orders = {r[0]: r for r in rows(ledger, "SELECT client_order_id, status, intent_key FROM orders")}
    ex_orders = rows(paper, "SELECT client_id, status FROM orders")
    ex_cids = [r[0] for r in ex_orders]
    assert len(ex_cids) == len(set(ex_cids)), "duplicate order on the exchange"
    keys = [r[2] for r in orders.values()]
    assert len(keys) == len(set(keys)), "one intent produced two orders"
    for cid, status in ex_orders:                        # nothing on the exchange the ledger does not know
        assert cid in orders, f"lost order {cid}: on the exchange, not in the ledger"
        assert orders[cid][1] not in ("ABANDONED", "REJECTED", "PENDING_SUBMIT", "UNKNOWN"), (cid, orders[cid][1])
        assert orders[cid][1] == status, (cid, orders[cid][1], status)
    for cid, (_, status, _) in orders.items():           # nothing the ledger believes is live that is not
        if status in ("OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELED"):
            assert cid in ex_cids, f"ledger order {cid} ({status}) missing on the exchange"
        assert status not in ("PENDING_SUBMIT", "UNKNOWN"), f"{cid} left unresolved"
    fills = {r[0] for r in rows(ledger, "SELECT trade_id FROM fills")}
    trades = {r[0] for r in rows(paper, "SELECT trade_id FROM trades")}
    assert fills == trades, f"ledger fills {sorted(fills ^ trades)} disagree with exchange trades"
    pos = rows(ledger, "SELECT qty FROM positions WHERE instrument = 'BTC/USDT'")
    held = rows(paper, "SELECT CAST(free AS TEXT), CAST(locked AS TEXT) FROM balances WHERE asset = 'BTC'")
    assert D(pos[0][0] if pos else "0") == (D(held[0][0]) + D(held[0][1]) if held else D(0))
    return orders


@pytest.mark.parametrize("point,faults", [
    ("after_intent", ()),
    ("after_send", ()),
    ("after_ack", ()),
    ("mid_fill", (("partial", 1, 0.5),)),
])
def test_sigkill_at_each_lifecycle_step_leaves_no_duplicate_and_no_lost_order(bot, point, faults):
    prepare(bot, faults)
    p = bot.start(env={"HARDKIT_BOT_CRASH_AT": point})
    assert p.wait(40) == -signal.SIGKILL, bot.logs()[-3000:]
    crashed = rows(bot.state / "ledger.sqlite", "SELECT client_order_id, status FROM orders ORDER BY id DESC LIMIT 1")[0]
    expect_before = {"after_intent": "PENDING_SUBMIT", "after_send": "PENDING_SUBMIT", "after_ack": "OPEN",
                     "mid_fill": "OPEN"}[point]
    if point == "mid_fill":   # one of the two fills is in the ledger, the order is not complete
        filled, qty = rows(bot.state / "ledger.sqlite", f"SELECT filled, qty FROM orders WHERE client_order_id = '{crashed[0]}'")[0]
        assert 0 < D(filled) < D(qty)
        assert rows(bot.state / "ledger.sqlite", "SELECT COUNT(*) FROM fills")[0][0] == 1
    if point == "after_ack":
        # acknowledged, fills not yet applied: the ledger keeps it live until they are
        assert rows(bot.state / "ledger.sqlite", "SELECT COUNT(*) FROM fills")[0][0] == 0
    assert crashed[1] == expect_before, crashed
    p2 = bot.start(max_steps=30)
    assert p2.wait(60) == 0, bot.logs()[-3000:]
    orders = assert_no_duplicate_no_lost(bot)
    final = orders[crashed[0]][1]
    if point == "after_intent":
        assert final == "ABANDONED"                       # it never reached the exchange, and was not re-sent
    else:
        assert final == "FILLED"
    state = rows(bot.state / "ledger.sqlite", "SELECT state, reason FROM trading_state")[0]
    assert "mismatch" not in state[1] and "reconciliation" not in state[1], state
