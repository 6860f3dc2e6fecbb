"""Positions are protected while the bot is down: a resting stop on the exchange (issue 9 item 12)."""
import signal
import sqlite3
import time
from decimal import Decimal as D


from hardkit_bot.config import parse
from hardkit_bot.exchange.paper import PaperExchange
from hardkit_bot.model import OrderStatus, OrderType, TradingState

from bot_helpers import config_text


def live_stops(rig):
    return [o for o in rig.ex.all_orders() if o.order_type is OrderType.STOP and o.status is OrderStatus.OPEN]


def held(rig):
    return rig.store.positions()["BTC/USDT"].qty


def test_every_entry_gets_a_resting_stop_for_the_position_at_the_stop_level(rig):
    rig.buy("0.01")
    rig.eng.step()
    [s] = live_stops(rig)
    assert s.qty == D("0.00999") == held(rig)                     # the whole position (net of the base-coin fee)
    assert s.trigger == rig.eng.stops.levels["BTC/USDT"][0]
    row = rig.store.order(s.client_order_id)
    assert row["protective"] == 1 and row["reduce_only"] == 1 and row["status"] == "OPEN"
    assert rig.ex.balances().balances["BTC"].free == 0             # the venue locks the coin for it


def test_a_tightened_stop_is_moved_and_never_two_live_stops(rig, clock):
    rig.buy("0.01")
    rig.eng.step()
    [old] = live_stops(rig)
    last = rig.eng.market.last["BTC/USDT"][0]
    new_level = (last * D("0.995")).quantize(D("0.01"))
    rig.eng.stops.set("BTC/USDT", new_level, None)                 # the trailing stop tightens (persisted first)
    rig.eng.step()
    assert [s.client_order_id for s in live_stops(rig)] == [old.client_order_id]   # moved at most every 30 s
    for _ in range(8):                                              # 40 s: the move happens, one stop at a time
        clock.advance(5)
        rig.eng.step()
        assert len(live_stops(rig)) <= 1
        assert sum(s.qty for s in live_stops(rig)) <= held(rig)
    [new] = live_stops(rig)
    assert new_level <= new.trigger <= rig.eng.stops.levels["BTC/USDT"][0]   # the bot's own stop trails ahead
    assert rig.exchange_orders(old.client_order_id)[0].status is OrderStatus.CANCELED


def test_a_crash_between_cancel_and_replace_leaves_no_second_stop_and_restores_one(rig, clock):
    rig.buy("0.01")
    rig.eng.step()
    [old] = live_stops(rig)
    last = rig.eng.market.last["BTC/USDT"][0]
    rig.eng.stops.set("BTC/USDT", (last * D("0.995")).quantize(D("0.01")), None)   # intent first
    rig.eng.om.cancel(old.client_order_id)                         # the old stop is gone ... and the bot dies
    assert live_stops(rig) == []
    rig.restart()
    level = rig.eng.stops.levels["BTC/USDT"][0]
    [s] = live_stops(rig)                                          # one stop again, at the persisted level
    assert s.trigger == level and s.qty == held(rig)
    assert rig.eng.sm.effective is TradingState.ACTIVE, rig.eng.sm.view().reason


def test_the_bot_releases_the_resting_stop_before_selling_itself(rig):
    rig.buy("0.01")
    rig.eng.step()
    [s] = live_stops(rig)
    cid = rig.eng.close_position("BTC/USDT", "take-profit", protective=False)
    assert rig.store.order(cid)["status"] == "FILLED"              # the coin was not locked any more
    assert rig.exchange_orders(s.client_order_id)[0].status is OrderStatus.CANCELED
    rig.eng.step()
    assert live_stops(rig) == []                                    # flat: no stop comes back


def test_flatten_cancels_the_resting_stop_and_verifies_flat(rig):
    rig.buy("0.01")
    rig.eng.step()
    assert live_stops(rig)
    out = rig.eng.flatten(timeout_s=5)
    assert out["flat"] is True and out["open_orders"] == [], out
    rig.eng.step()
    assert live_stops(rig) == []


def test_halt_keeps_the_resting_stop(rig):
    rig.buy("0.01")
    rig.eng.step()
    [s] = live_stops(rig)
    rig.eng.halt("test")
    rig.eng.step()
    assert [x.client_order_id for x in live_stops(rig)] == [s.client_order_id]


def test_a_lost_ledger_halts_but_keeps_the_stop_guarding_the_position(rig):
    rig.buy("0.01")
    rig.eng.step()
    [s] = live_stops(rig)
    rig.store.close()
    for n in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"):
        (rig.tmp / n).unlink(missing_ok=True)
    rig.restart()
    assert rig.eng.sm.effective is TradingState.HALTED and s.client_order_id in rig.report.adopted
    rig.eng.step()
    assert [x.client_order_id for x in live_stops(rig)] == [s.client_order_id]   # the halt cancelled entries only
    assert rig.store.order(s.client_order_id)["protective"] == 1


def test_killed_bot_position_is_closed_by_the_exchange_stop_on_a_price_drop(bot):
    text = config_text(loop=0.05, bar=0.02)
    bot.write_config(text)
    p = bot.start()
    ex_path = bot.state / "paper-exchange.sqlite"

    def resting_stop():
        if not ex_path.exists():
            return None
        c = sqlite3.connect(f"file:{ex_path}?mode=ro", uri=True)
        try:
            return c.execute("SELECT client_id, qty, trigger FROM orders WHERE type = 'stop' AND status = 'OPEN'").fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            c.close()
    cid, qty, trigger = bot.wait_for(resting_stop, timeout=60, what="a position with a resting stop")
    p.send_signal(signal.SIGKILL)
    assert p.wait(10) == -signal.SIGKILL
    cfg = parse(text)
    ex = PaperExchange(ex_path, {i.symbol: i for i in cfg.instruments}, bar_seconds=0.02)
    try:
        ex.inject("gap", arg=-20.0)                                 # the market falls 20 % with the bot dead
        ex.ticker("BTC/USDT")
        time.sleep(0.2)
        ex.balances()                                               # the venue processes the bars meanwhile
        [o] = [o for o in ex.all_orders() if o.client_order_id == cid]
        assert o.status is OrderStatus.FILLED and o.filled == D(qty)
        assert o.avg_price <= D(trigger)          # a stop-market sells at the first price past the gap
        assert not cfg.instruments[0].holds(ex.balances().total("BTC"))
    finally:
        ex.close()
    p2 = bot.start(max_steps=20)
    assert p2.wait(60) == 0, bot.logs()[-3000:]
    c = sqlite3.connect(f"file:{bot.state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        status, = c.execute("SELECT status FROM orders WHERE client_order_id = ?", (cid,)).fetchone()
        state, reason = c.execute("SELECT state, reason FROM trading_state").fetchone()
        fills = {r[0] for r in c.execute("SELECT trade_id FROM fills")}
    finally:
        c.close()
    assert status == "FILLED"                                       # the restart took the stop's fill in
    assert "mismatch" not in reason and "does not have" not in reason, (state, reason)
    t = sqlite3.connect(f"file:{ex_path}?mode=ro", uri=True)
    try:
        trades = {r[0] for r in t.execute("SELECT trade_id FROM trades")}
    finally:
        t.close()
    assert fills == trades
