"""The venue's dead-man's switch covers entry orders only (issue 9 item 12): which orders survive a dead bot.

An entry resting alone is cancelled by the venue once the killed bot stops refreshing the
switch; a position's resting stop is never exposed to the switch and still fires on a drop."""
import signal
import sqlite3
import time
from decimal import Decimal as D

import pytest

from hardkit_bot.config import ConfigError, parse
from hardkit_bot.deadman import wants_switch
from hardkit_bot.exchange.paper import PaperExchange
from hardkit_bot.model import OrderStatus, OrderType, Side, TradingState

from bot_helpers import config_text

TIMEOUT = 60.0          # the default exchange.dead_man_timeout_s the in-process rig runs with


def row(side="buy", protective=0, reduce_only=0, status="OPEN"):
    return {"side": side, "protective": protective, "reduce_only": reduce_only, "status": status}


def test_arming_rule_entries_only_and_never_beside_a_stop_or_an_exit():
    entry, unknown_entry = row(), row(status="UNKNOWN")
    stop = row("sell", protective=1, reduce_only=1)
    exit_sell = row("sell", reduce_only=1)                       # take-profit / strategy exit
    protective_buy = row(protective=1)
    assert wants_switch([entry]) and wants_switch([entry, unknown_entry])
    assert not wants_switch([])
    assert not wants_switch([stop]) and not wants_switch([entry, stop]) and not wants_switch([unknown_entry, stop])
    assert not wants_switch([entry, exit_sell]) and not wants_switch([exit_sell])
    assert not wants_switch([protective_buy])


# ---- the paper venue's switch ------------------------------------------------------------

@pytest.fixture
def venue(tmp_path, clock):
    cfg = parse(config_text())
    ex = PaperExchange(tmp_path / "venue.sqlite", {i.symbol: i for i in cfg.instruments}, bar_seconds=1.0, clock=clock)
    clock.advance(3)
    yield ex
    ex.close()


def _stop_and_held_entry(ex):
    """A position with its resting stop, and a market entry the venue holds unfilled."""
    ex.create_order("c-buy", "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"), None)
    last = ex.ticker("BTC/USDT")[0]
    ex.create_order("c-stop", "BTC/USDT", Side.SELL, OrderType.STOP, D("0.00999"), None,
                    trigger=(last * D("0.9")).quantize(D("0.01")))
    ex.inject("hold", arg=1000)
    ex.create_order("c-entry", "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"), None)
    assert {o.client_order_id for o in ex.open_orders()} == {"c-stop", "c-entry"}


def test_paper_switch_refreshed_holds_and_expired_cancels_every_open_order(venue, clock):
    _stop_and_held_entry(venue)
    venue.cancel_all_after(10)
    clock.advance(8)
    venue.cancel_all_after(10)                                   # refreshed in time
    clock.advance(8)
    assert len(venue.open_orders()) == 2
    clock.advance(3)                                             # 11 s since the refresh: it fires
    assert venue.open_orders() == []
    assert {o.client_order_id: o.status for o in venue.all_orders()} == {
        "c-buy": OrderStatus.FILLED, "c-stop": OrderStatus.CANCELED, "c-entry": OrderStatus.CANCELED}
    bal = venue.balances().balances
    assert bal["USDT"].free == bal["USDT"].total and bal["BTC"].free == bal["BTC"].total   # nothing stays locked
    assert venue.dead_man_deadline() is None


def test_paper_switch_disarmed_never_fires_and_a_late_refresh_revives_nothing(venue, clock):
    _stop_and_held_entry(venue)
    venue.cancel_all_after(5)
    venue.cancel_all_after(0)
    clock.advance(30)
    assert len(venue.open_orders()) == 2
    venue.cancel_all_after(5)
    clock.advance(6)
    venue.cancel_all_after(5)                                    # too late: it fired at its deadline
    assert venue.open_orders() == []


# ---- the engine arms it for entries only ------------------------------------------------------

def deadline(rig):
    return rig.ex.dead_man_deadline()


def live_stops(rig):
    return [o for o in rig.exchange_orders() if o.order_type is OrderType.STOP and o.status is OrderStatus.OPEN]


def test_a_resting_entry_arms_the_switch_every_iteration_until_it_is_final(rig, clock):
    assert deadline(rig) is None
    rig.ex.inject("hold", arg=5)                                 # the market is slow: the entry rests
    r = rig.buy("0.01")
    assert r.status is OrderStatus.OPEN and deadline(rig) == clock() + TIMEOUT
    assert rig.eng.status()["dead_man_switch"] == "armed"
    clock.advance(1)
    rig.eng.step()
    assert deadline(rig) == clock() + TIMEOUT                    # refreshed by the iteration
    for _ in range(6):
        clock.advance(1)
        rig.eng.step()
    assert rig.store.order(r.client_order_id)["status"] == "FILLED"
    assert [o.status for o in rig.exchange_orders() if o.order_type is OrderType.STOP] == [OrderStatus.OPEN]
    assert deadline(rig) is None                                 # disarmed before the stop was sent
    assert rig.eng.status()["dead_man_switch"] == "disarmed"


def test_a_failed_disarm_never_blocks_the_stop_and_is_retried(rig, clock):
    rig.ex.inject("hold", arg=2)
    rig.buy("0.01")
    armed_at = deadline(rig)
    assert armed_at is not None
    clock.advance(3)                                             # the entry fills on the venue meanwhile
    rig.ex.inject("switch_timeout", count=2)                     # the disarm before the stop, and its retry, time out
    rig.eng.step()
    assert len(live_stops(rig)) == 1                             # the stop went out all the same ...
    assert deadline(rig) == armed_at                             # ... the switch still armed (and not refreshed)
    clock.advance(1)
    rig.eng.step()
    assert deadline(rig) is None                                 # the next iteration disarmed it


def test_an_entry_of_unknown_outcome_keeps_the_switch_armed(rig, clock):
    rig.ex.inject("timeout_lost")
    r = rig.buy("0.01")                                          # never arrived: UNKNOWN until the grace ends
    assert r.status is OrderStatus.UNKNOWN and deadline(rig) == clock() + TIMEOUT
    clock.advance(6)
    rig.eng.step()                                               # grace over: ABANDONED, nothing of ours is live
    assert rig.store.order(r.client_order_id)["status"] == "ABANDONED"
    assert deadline(rig) is None


def test_no_switch_while_a_stop_is_live_and_an_entry_older_than_the_timeout_is_cancelled_at_start(rig, clock):
    rig.buy("0.01")
    rig.eng.step()
    assert len(live_stops(rig)) == 1
    rig.ex.inject("hold", arg=1000)
    entry = rig.buy("0.01").client_order_id
    assert rig.store.order(entry)["status"] == "OPEN"
    rig.eng.step()
    assert deadline(rig) is None                                 # protection wins: the stop is not exposed
    rig.restart()                                                # a quick restart keeps the young entry
    assert rig.store.order(entry)["status"] == "OPEN" and deadline(rig) is None
    clock.advance(TIMEOUT)                                       # the bot dies again and stays down a while
    rig.restart()
    assert rig.exchange_orders(entry)[0].status is OrderStatus.CANCELED
    assert rig.store.order(entry)["status"] == "CANCELED"
    [stop] = live_stops(rig)                                     # the position keeps its stop (the restart may move it)
    assert stop.qty == rig.store.positions()["BTC/USDT"].qty
    assert rig.eng.sm.effective is TradingState.ACTIVE, rig.eng.sm.view().reason
    assert deadline(rig) is None


def test_an_uncovered_entry_that_fills_while_the_bot_is_down_is_taken_in_and_protected(rig, clock):
    rig.buy("0.01")
    rig.eng.step()
    rig.ex.inject("hold", arg=5)
    entry = rig.buy("0.01").client_order_id                      # rests beside the stop: not covered
    clock.advance(10)                                            # the bot is down; the entry fills meanwhile
    rig.restart()
    rig.eng.step()
    assert rig.store.order(entry)["status"] == "FILLED"
    assert rig.eng.sm.effective is TradingState.ACTIVE, rig.eng.sm.view().reason
    [stop] = live_stops(rig)                                     # one stop, for the whole (larger) position
    assert stop.qty == rig.store.positions()["BTC/USDT"].qty == D("0.01998")
    rig.assert_books_agree()


def test_switched_off_it_never_arms_and_a_restart_leaves_the_entry(rig, clock):
    rig.cfg = parse(config_text(bar=1.0, grace=5.0).replace("[exchange]", "[exchange]\ndead_man_switch = false"))
    rig.restart()
    rig.ex.inject("hold", arg=1000)
    entry = rig.buy("0.01").client_order_id
    rig.eng.step()
    assert deadline(rig) is None and rig.eng.status()["dead_man_switch"] == "off"
    clock.advance(TIMEOUT)
    rig.restart()
    assert rig.store.order(entry)["status"] == "OPEN"


def test_the_timeout_must_outlast_several_iterations():
    with pytest.raises(ConfigError, match="dead_man_timeout_s"):
        parse(config_text(loop=1.0).replace("[exchange]", "[exchange]\ndead_man_timeout_s = 3"))
    parse(config_text(loop=1.0).replace("[exchange]", "[exchange]\ndead_man_switch = false\ndead_man_timeout_s = 3"))


# ---- the real process, SIGKILLed --------------------------------------------------------------

KILL_TIMEOUT = 1.5      # dead_man_timeout_s of the process tests (>= 5 x loop_interval_s 0.05)


def _venue(bot, text):
    cfg = parse(text)
    return PaperExchange(bot.state / "paper-exchange.sqlite", {i.symbol: i for i in cfg.instruments}, bar_seconds=0.02)


def _read(path, sql):
    if not path.exists():
        return None
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return c.execute(sql).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        c.close()


def _start_with_a_held_entry(bot, hold_s, env=None):
    """The bot against a paper venue that will hold its first market entry unfilled for `hold_s`."""
    text = config_text(loop=0.05, bar=0.02).replace("[exchange]", f"[exchange]\ndead_man_timeout_s = {KILL_TIMEOUT}")
    bot.write_config(text)
    bot.state.mkdir(parents=True, exist_ok=True)
    ex = _venue(bot, text)
    ex.inject("hold", arg=hold_s)
    ex.close()
    return text, bot.start(env=env)


def _restart_takes_in_the_cancel(bot, cid):
    """A restarted bot resolves the venue's cancel into its ledger and finds nothing amiss."""
    p = bot.start(max_steps=20)
    assert p.wait(60) == 0, bot.logs()[-3000:]
    status, = _read(bot.state / "ledger.sqlite", f"SELECT status FROM orders WHERE client_order_id = '{cid}'")
    state, reason = _read(bot.state / "ledger.sqlite", "SELECT state, reason FROM trading_state")
    assert status == "CANCELED" and "mismatch" not in reason, (status, state, reason)


def test_killed_bot_with_only_an_entry_resting_the_venue_cancels_it(bot):
    text, p = _start_with_a_held_entry(bot, hold_s=120)
    ex_path = bot.state / "paper-exchange.sqlite"
    cid, = bot.wait_for(lambda: _read(ex_path, "SELECT client_id FROM orders WHERE type = 'market' AND status = 'OPEN'"),
                        timeout=60, what="a resting entry")   # armed before it was sent: no wait for that
    p.send_signal(signal.SIGKILL)
    assert p.wait(10) == -signal.SIGKILL
    time.sleep(KILL_TIMEOUT + 0.3)
    ex = _venue(bot, text)
    try:
        assert ex.open_orders() == []                                # any call lets the venue act
        assert [o.status for o in ex.all_orders() if o.client_order_id == cid] == [OrderStatus.CANCELED]
        assert ex.balances().balances["USDT"].free == D("10000")      # its funds are free again
    finally:
        ex.close()
    _restart_takes_in_the_cancel(bot, cid)


def test_killed_bot_in_a_position_keeps_its_stop_past_the_timeout_and_it_fires(bot):
    text, p = _start_with_a_held_entry(bot, hold_s=0.3)               # armed while the entry rests, then filled
    ex_path = bot.state / "paper-exchange.sqlite"
    cid, qty, trigger = bot.wait_for(
        lambda: _read(ex_path, "SELECT client_id, qty, trigger FROM orders WHERE type = 'stop' AND status = 'OPEN'"),
        timeout=60, what="a position with a resting stop")
    assert _read(ex_path, "SELECT 1 FROM orders WHERE type = 'market' AND hold_until IS NOT NULL")   # it was held
    p.send_signal(signal.SIGKILL)
    assert p.wait(10) == -signal.SIGKILL
    time.sleep(KILL_TIMEOUT + 0.3)
    ex = _venue(bot, text)
    try:
        # The switch was not armed: the stop survives. The paper market moves with the clock, so on a loaded
        # machine it may have reached the stop already (filled, never cancelled); else a fall fills it now.
        ex.balances()                                                # any call lets the venue act
        [o] = [o for o in ex.all_orders() if o.client_order_id == cid]
        assert o.status in (OrderStatus.OPEN, OrderStatus.FILLED), o
        assert ex.dead_man_deadline() is None
        if o.status is OrderStatus.OPEN:
            ex.inject("gap", arg=-20.0)                              # then the market falls
            ex.ticker("BTC/USDT")
            time.sleep(0.2)
            ex.balances()
            [o] = [o for o in ex.all_orders() if o.client_order_id == cid]
        assert o.status is OrderStatus.FILLED and o.filled == D(qty) and o.avg_price <= D(trigger)
    finally:
        ex.close()


def test_killed_between_send_and_ack_the_entry_was_already_covered(bot):
    text, p = _start_with_a_held_entry(bot, hold_s=120, env={"HARDKIT_BOT_CRASH_AT": "after_send"})
    assert p.wait(60) == -signal.SIGKILL, bot.logs()[-3000:]         # the venue has the entry, the ledger no ack
    cid, status = _read(bot.state / "ledger.sqlite", "SELECT client_order_id, status FROM orders")
    assert status == "PENDING_SUBMIT"
    ex = _venue(bot, text)
    try:
        assert [o.client_order_id for o in ex.open_orders()] == [cid]
        assert ex.dead_man_deadline() is not None                    # armed at the intent, before the send
        time.sleep(KILL_TIMEOUT + 0.3)
        assert ex.open_orders() == []
    finally:
        ex.close()
    _restart_takes_in_the_cancel(bot, cid)
