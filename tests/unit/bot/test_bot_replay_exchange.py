"""The replay's paper exchange (`ReplayPaperExchange`): PaperExchange's market rules over a book
kept in Python structures. It must hold the very rows the SQLite book holds after the same calls,
answer every call the same way; a replay through it decides exactly as through SQLite
(test_bot_replay_ledger.py compares the two replays)."""
from decimal import Decimal as D

import pytest

from hardkit_bot.config import parse
from hardkit_bot.exchange.base import DuplicateClientOrderId, OrderNotFound, OrderRejected
from hardkit_bot.exchange.market import generate
from hardkit_bot.exchange.paper import PaperExchange
from hardkit_bot.exchange.paper_replay import ReplayPaperExchange
from hardkit_bot.model import OrderType, Side

from bot_helpers import config_text

SYM = "BTC/USDT"


def _venues(cfg, clock):
    insts = {i.symbol: i for i in cfg.instruments}
    return [cls(":memory:", insts, clock=clock, manual=True, bar_seconds=60.0) for cls in (PaperExchange, ReplayPaperExchange)]


def _book(ex):
    """Everything the exchange holds, as its callers see it and as rows."""
    return (ex.all_orders(), ex.balances(), ex.open_orders(), ex._order_rows(), sorted(ex._balance_rows()),
            ex.recent_trades(SYM, None), ex.recent_trades(SYM, 0.0, 3), ex.recent_trades(SYM, None, 2))


def _call(fn, *args):
    try:
        return fn(*args)
    except (DuplicateClientOrderId, OrderNotFound, OrderRejected) as e:
        return type(e).__name__, str(e)


def test_the_same_calls_leave_the_same_rows_and_answers(clock):
    """Market, limit and stop orders, fills against later bars, cancels and every kind of refusal."""
    cfg = parse(config_text())
    venues = _venues(cfg, clock)
    bars = generate(400, seed=3)
    script = [("feed", 0), ("create", "hk1-a-1", Side.BUY, OrderType.MARKET, D("0.05"), None, None),
              ("create", "hk1-a-1", Side.BUY, OrderType.MARKET, D("0.05"), None, None),          # duplicate id
              ("create", "hk1-a-2", Side.BUY, OrderType.MARKET, D("100"), None, None),           # insufficient quote
              ("create", "hk1-a-3", Side.SELL, OrderType.STOP, D("0.02"), None, "below"),        # resting stop
              ("create", "hk1-a-4", Side.BUY, OrderType.LIMIT, D("0.01"), "below", None),        # resting limit buy
              ("create", "hk1-a-5", Side.SELL, OrderType.LIMIT, D("0.01"), "above", None),       # resting limit sell
              ("create", "hk1-a-6", Side.SELL, OrderType.STOP, D("0.01"), None, "above"),        # would trigger now
              ("cancel", "hk1-a-5"), ("cancel", "hk1-nope"), ("fetch", "hk1-a-4"), ("fetch", "hk1-nope")]
    script += [("feed", i) for i in range(1, 400)]
    for step in script:
        answers = []
        for ex in venues:
            if step[0] == "feed":
                clock.t = bars[step[1]].ts + 60.0
                answers.append(ex.feed(SYM, bars[step[1]]))
            elif step[0] == "create":
                cid, side, typ, qty, price, trigger = step[1:]
                last = ex.ticker(SYM)[0]
                level = {"below": (last * D("0.99")).quantize(D("0.01")), "above": (last * D("1.01")).quantize(D("0.01"))}
                answers.append(_call(ex.create_order, cid, SYM, side, typ, qty, level.get(price), level.get(trigger)))
            elif step[0] == "cancel":
                answers.append(_call(ex.cancel_order, SYM, step[1]))
            else:
                answers.append(_call(ex.fetch_order, SYM, step[1]))
        assert answers[0] == answers[1], step
        assert _book(venues[0]) == _book(venues[1]), step
    sql, mem = venues
    assert [o.status.value for o in sql.all_orders()] != ["OPEN"] * len(sql.all_orders())   # the bars filled some
    assert sql.order_trades(SYM, "hk1-a-1") == mem.order_trades(SYM, "hk1-a-1") != []


def test_it_takes_no_faults_and_no_file(cfg, clock):
    mem = _venues(cfg, clock)[1]
    with pytest.raises(NotImplementedError):
        mem.inject("reject")
    with pytest.raises(ValueError):
        ReplayPaperExchange("/tmp/x.sqlite", {i.symbol: i for i in cfg.instruments}, clock=clock, manual=True)
