"""Breakers trip at the right point and not before; latched state survives restarts and midnight."""
from datetime import datetime
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from hardkit_bot.model import Fill, Side, TradingState
from hardkit_bot.risk.limits import (ActivityRate, ConsecutiveLosses, DailyLoss, Drawdown, EquityFloor, StaleData,
                                     Volatility)
from hardkit_bot.risk.state import StateMachine
from hardkit_bot.store import Store

BERLIN = ZoneInfo("Europe/Berlin")


def ts(s: str, tz=BERLIN) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=tz).timestamp()


def apply(sm, trips):
    for st, why in trips:
        sm.escalate(st, why)


@pytest.fixture
def ledger(tmp_path):
    return tmp_path / "ledger.sqlite"


def test_daily_loss_trips_at_reduce_then_halt_and_not_before(ledger, clock):
    store = Store(ledger, clock)
    dl = DailyLoss(store, BERLIN, 2.0, 3.0)
    t = ts("2026-03-10T09:00:00")
    assert dl.update(t, 10000.0) == []
    assert dl.update(t + 1, 9800.01) == []                       # 1.9999 %: nothing
    trips = dl.update(t + 2, 9800.0)                              # exactly 2 %
    assert [s for s, _ in trips] == [TradingState.REDUCING]
    assert dl.update(t + 3, 9700.01)[0][0] is TradingState.REDUCING
    trips = dl.update(t + 4, 9700.0)                              # exactly 3 %
    assert trips[0][0] is TradingState.HALTED and "max daily loss" in trips[0][1] and "Europe/Berlin" in trips[0][1]


def test_daily_anchor_and_halt_survive_restart_and_midnight(ledger, clock):
    clock.t = ts("2026-03-10T23:59:00")
    store = Store(ledger, clock)
    sm, dl = StateMachine(store, clock), DailyLoss(store, BERLIN, 2.0, 3.0)
    apply(sm, dl.update(clock.t, 10000.0))
    apply(sm, dl.update(clock.t + 10, 9850.0))                    # 1.5 %: still ACTIVE
    assert sm.effective is TradingState.ACTIVE
    store.close()
    # restart the same day: the anchor is the persisted midnight equity, not the equity at restart
    store = Store(ledger, clock)
    sm, dl = StateMachine(store, clock), DailyLoss(store, BERLIN, 2.0, 3.0)
    apply(sm, dl.update(clock.t + 20, 9690.0))                    # 3.1 % vs the anchor 10000
    assert sm.effective is TradingState.HALTED
    reason = sm.view().reason
    # midnight rollover: a new day re-anchors, but never clears the latched halt
    clock.t = ts("2026-03-11T00:00:05")
    apply(sm, dl.update(clock.t, 9690.0))
    assert dl.anchor == 9690.0 and dl.loss_pct == 0.0
    assert sm.effective is TradingState.HALTED and sm.view().reason == reason
    store.close()
    store = Store(ledger, clock)
    sm = StateMachine(store, clock)
    v = sm.view()
    assert v.state is TradingState.HALTED and v.reason == reason
    # the midnight in question is Berlin's, not UTC's: 23:30 UTC is already the next day in Berlin
    dl2 = DailyLoss(store, BERLIN, 2.0, 3.0)
    assert dl2.day == "2026-03-11"


def test_daily_loss_unchanged_only_when_an_update_would_answer_the_same(ledger, clock):
    """The engine skips the equity breakers when `unchanged()` says so (engine.breakers): it must say
    so only for the same equity on the same day with the same anchor."""
    store = Store(ledger, clock)
    dl = DailyLoss(store, BERLIN, 2.0, 3.0)
    t = ts("2026-03-10T09:00:00")
    assert not dl.unchanged(t, 10000.0)                          # never evaluated
    dl.update(t, 10000.0)
    dl.update(t + 1, 9750.0)
    assert dl.unchanged(t + 2, 9750.0) and dl._last_seen == (t + 2, 9750.0)   # recorded as update would
    assert not dl.unchanged(t + 3, 9749.0)                       # equity moved
    assert not dl.unchanged(ts("2026-03-11T00:00:01"), 9750.0)   # a new day: a new anchor
    dl.load()
    assert not dl.unchanged(t + 4, 9750.0)                       # re-read (a reset): evaluate in full
    dl.update(t + 4, 9750.0)
    assert dl.unchanged(t + 5, 9750.0)


def test_daily_loss_uses_local_midnight_not_utc(ledger, clock):
    store = Store(ledger, clock)
    dl = DailyLoss(store, BERLIN, 2.0, 3.0)
    dl.update(ts("2026-03-10T22:30:00", ZoneInfo("UTC")), 10000.0)   # 23:30 Berlin
    assert dl.day == "2026-03-10"
    dl.update(ts("2026-03-10T23:30:00", ZoneInfo("UTC")), 9000.0)    # 00:30 Berlin: new day, new anchor
    # anchored on the equity seen nearest before Berlin midnight, so the fall across midnight counts
    assert dl.day == "2026-03-11" and dl.anchor == 10000.0 and dl.loss_pct == 10.0


def test_drawdown_is_peak_to_trough_on_equity_and_survives_restart(ledger, clock):
    store = Store(ledger, clock)
    dd = Drawdown(store, 10.0)
    assert dd.update(0, 10000.0) == [] and dd.update(1, 12000.0) == []
    assert dd.update(2, 10800.01) == []                           # 9.9999 % from 12000
    store.close()
    store = Store(ledger, clock)
    dd = Drawdown(store, 10.0)
    assert dd.peak == 12000.0
    trips = dd.update(3, 10800.0)                                  # exactly 10 %
    assert trips and trips[0][0] is TradingState.HALTED and "peak 12000" in trips[0][1]


def fill(n, side, qty, price, cid="hk1-1"):
    return Fill(f"t{n}", cid, "BTC/USDT", side, D(qty), D(price), D("0"), 0.0)


def test_consecutive_losses_are_true_consecutive_and_persisted(ledger, clock):
    store = Store(ledger, clock)
    cl = ConsecutiveLosses(store, 3)
    n = 0

    def trip(win: bool):
        nonlocal n
        store.apply_fill(fill(n := n + 1, Side.BUY, "1", "100"))
        store.apply_fill(fill(n := n + 1, Side.SELL, "0.5", "101" if win else "99"))
        store.apply_fill(fill(n := n + 1, Side.SELL, "0.5", "101" if win else "99"))

    trip(False)
    trip(False)
    cl.refresh()
    assert cl.update(0, 0) == []
    trip(True)                                                    # a win resets the streak
    trip(False)
    trip(False)
    cl.refresh()
    assert cl.update(0, 0) == [] and cl.streak == 2
    store.close()
    store = Store(ledger, clock)
    cl = ConsecutiveLosses(store, 3)
    n = 100
    trip(False)
    cl.refresh()
    trips = cl.update(0, 0)
    assert trips and trips[0][0] is TradingState.HALTED and cl.streak == 3


def test_equity_floor_kills_and_kill_needs_manual_reset(ledger, clock):
    store = Store(ledger, clock)
    sm, fl = StateMachine(store, clock), EquityFloor(7000.0)
    apply(sm, fl.update(0, 7000.0))
    assert sm.effective is TradingState.ACTIVE                   # at the floor is not below it
    apply(sm, fl.update(0, 6999.99))
    assert sm.effective is TradingState.KILLED
    assert not sm.escalate(TradingState.HALTED, "lower")          # never lowered by a breaker
    store.close()
    store = Store(ledger, clock)
    sm = StateMachine(store, clock)
    assert sm.effective is TradingState.KILLED                   # a restart never clears it
    assert sm.reset("operator checked the account") is TradingState.KILLED
    assert sm.effective is TradingState.ACTIVE


def test_activity_spikes(clock):
    ar = ActivityRate({"orders": 5, "rejects": 3, "cancels": 4})
    for i in range(2):
        ar.record("rejects", 100 + i)
    assert ar.update(101, 0) == []
    ar.record("rejects", 102)
    trips = ar.update(102, 0)
    assert trips and "3 rejects" in trips[0][1] and trips[0][0] is TradingState.HALTED
    assert ar.update(162.5, 0) == []                              # the minute rolled past them


def test_stale_data_is_transient(ledger, clock):
    store = Store(ledger, clock)
    sm = StateMachine(store, clock)
    sd = StaleData(["BTC/USDT"], 30.0, started=0.0)
    assert sd.check(30.0) is None
    why = sd.check(30.01)
    assert "stale" in why
    sm.set_transient("stale_data", TradingState.REDUCING, why)
    assert sm.effective is TradingState.REDUCING and sm.latched is TradingState.ACTIVE
    sd.seen("BTC/USDT", 31.0)
    assert sd.check(31.0) is None
    sm.set_transient("stale_data", None)
    assert sm.effective is TradingState.ACTIVE


def test_volatility_breaker_has_hysteresis():
    v = Volatility(window=50, z_enter=5.0, z_exit=2.0, clear_bars=3)
    import random
    rng = random.Random(1)
    for _ in range(60):
        r = 1.0 + rng.uniform(-0.1, 0.1)
        assert v.on_bar(100 + r, 100 - r, 100) is None
    assert v.on_bar(100 + 1.15, 100 - 1.15, 100) is None and 1 < v.z < 5   # elevated but below enter
    assert v.on_bar(110, 90, 100) is True and v.active             # spike: enters
    assert v.on_bar(104, 96, 100) is None and v.active             # still high: z above exit, stays
    for _ in range(2):
        assert v.on_bar(101, 99, 100) is None and v.active         # calm, but fewer than clear_bars
    assert v.on_bar(101, 99, 100) is False and not v.active        # third calm bar: clears


def test_a_loss_while_down_across_midnight_counts_for_the_new_day(ledger, clock):
    store = Store(ledger, clock)
    dl = DailyLoss(store, BERLIN, 2.0, 3.0)
    assert dl.update(ts("2026-03-10T23:40:00"), 10000.0) == []
    store.snapshot_equity(ts("2026-03-10T23:50:00"), D("10000"), D("10000"), D("0"))   # the bot's last record, then down
    store.close()
    store = Store(ledger, clock)                                   # back at 00:30, 3.5 % poorer
    sm, dl = StateMachine(store, clock), DailyLoss(store, BERLIN, 2.0, 3.0)
    apply(sm, dl.update(ts("2026-03-11T00:30:00"), 9650.0))
    assert dl.day == "2026-03-11" and dl.anchor == 10000.0
    assert sm.effective is TradingState.HALTED and "3.50%" in sm.view().reason
