"""Engine-level behaviour through the replay path: stops, volatility auto-close, daily loss on unrealized PnL."""
import logging
from decimal import Decimal as D

import pytest

from hardkit_bot import backtest
from hardkit_bot.config import parse
from hardkit_bot.exchange.market import generate
from hardkit_bot.metrics import render, write_textfile
from hardkit_bot.model import TradingState
from hardkit_bot.store import Store

from bot_helpers import Replay, config_text


@pytest.fixture
def rp(tmp_path, clock):
    return Replay(tmp_path, clock, extra_risk="vol_z_enter = 50\nvol_z_exit = 2")


def test_trailing_stop_only_tightens_and_fires_even_when_halted(rp):
    for _ in range(20):
        rp.bar()
    assert rp.buy().status.value == "FILLED"
    assert rp.eng.stops.levels["BTC/USDT"][0] == D("95")            # the entry's planned stop
    for px in (101, 102, 103, 104):
        rp.bar(px)
    raised = rp.eng.stops.levels["BTC/USDT"][0]
    assert raised > D("95")
    rp.bar(103.5)                                                      # a dip never lowers it
    assert rp.eng.stops.levels["BTC/USDT"][0] >= raised
    rp.eng.sm.escalate(TradingState.HALTED, "test")
    rp.bar(float(raised) - 0.5)                                        # trades through the stop
    assert rp.qty == 0                                                 # protective exit passed the guard while HALTED
    assert "BTC/USDT" not in rp.eng.stops.levels                       # stop removed with the position
    sells = [r for r in rp.store.orders() if r["side"] == "sell"]
    assert sells and sells[-1]["protective"] == 1 and sells[-1]["reason"] == "stop-loss"


def test_stop_level_survives_restart(rp, tmp_path, clock):
    for _ in range(20):
        rp.bar()
    rp.buy()
    for px in (101, 102, 103):
        rp.bar(px)
    level = rp.eng.stops.levels["BTC/USDT"][0]
    rp.store.close()
    store = Store(tmp_path / "ledger.sqlite", clock)
    assert store.stops()["BTC/USDT"][0] == level


def test_volatility_spike_auto_closes_and_clears_with_hysteresis(tmp_path, clock):
    rp = Replay(tmp_path, clock, extra_risk="vol_window = 20\nvol_z_enter = 5\nvol_z_exit = 2\nvol_clear_bars = 3")
    for k in range(25):
        rp.bar(rng=0.2 + 0.02 * (k % 3))
    rp.buy()
    assert rp.qty == D("9")
    rp.bar(rng=8.0)                                                    # abnormal range
    v = rp.eng.sm.view()
    assert v.state is TradingState.REDUCING and "abnormal volatility" in v.reason
    assert rp.qty == 0                                                 # auto-closed
    assert rp.buy().denial.code.value == "STATE_REDUCING"             # no new exposure meanwhile
    rp.bar(rng=0.2)
    rp.bar(rng=0.2)
    assert rp.eng.sm.effective is TradingState.REDUCING                # not yet: needs 3 calm bars
    rp.bar(rng=0.2)
    assert rp.eng.sm.effective is TradingState.ACTIVE                  # cleared by itself (not latched)


def test_daily_loss_counts_unrealized_pnl(tmp_path, clock):
    rp = Replay(tmp_path, clock, extra_risk='daily_loss_reduce_pct = "1"\nmax_daily_loss_pct = "2"\nmax_order_notional = "5000"\nmax_total_exposure = "8000"\nrisk_per_trade_pct = "5"\nvol_z_enter = 50')
    for _ in range(5):
        rp.bar()
    rp.buy(qty="40", stop="90", tp="130")                              # 4000 notional on 10000 equity
    rp.bar(97.6)                                                       # -96 unrealized: 0.96 %
    assert rp.eng.sm.effective is TradingState.ACTIVE
    rp.bar(97.4)                                                       # -104: 1.04 % -> REDUCING
    assert rp.eng.sm.effective is TradingState.REDUCING and rp.qty == D("40")   # nothing realized yet
    rp.bar(94.9)                                                       # -204: 2.04 % -> HALTED
    v = rp.eng.sm.view()
    assert v.state is TradingState.HALTED and "max daily loss: 2.04%" in v.reason


def test_backtest_uses_the_same_guard_and_is_deterministic():
    logging.disable(logging.INFO)
    try:
        cfg = parse(config_text().replace("max_consecutive_losses = 1000", "max_consecutive_losses = 3"))
        bars = generate(20000, seed=3)
        a, b = backtest.run(cfg, bars), backtest.run(cfg, bars)
    finally:
        logging.disable(logging.NOTSET)
    assert a.trades > 0 and (a.trades, a.end_equity, a.final_state) == (b.trades, b.end_equity, b.final_state)
    assert a.final_state == "HALTED" and "consecutive losing trades" in a.state_reason


def test_metrics_textfile_is_prometheus_text(rp, tmp_path):
    rp.bar()
    path = tmp_path / "hardkit_bot.prom"
    write_textfile(str(path), rp.eng.status())
    text = path.read_text()
    assert text == render(rp.eng.status())
    for line in text.splitlines():
        assert line.startswith("# ") or line.split(" ")[-1].replace(".", "").replace("-", "").replace("e", "").isdigit()
    assert 'hardkit_bot_limit_used{limit="daily_loss_pct"}' in text


def test_equity_floor_kills_and_flattens_then_needs_a_manual_reset(tmp_path, clock):
    rp = Replay(tmp_path, clock, extra_risk='equity_floor = "9950"\nvol_z_enter = 50\nrisk_per_trade_pct = "5"\n'
                                            'max_daily_loss_pct = "50"\ndaily_loss_reduce_pct = "40"')
    for _ in range(5):
        rp.bar()
    rp.buy(qty="20", stop="80", tp="160")
    rp.bar(99.0)                                                       # -20: equity 9980, above the floor
    assert rp.eng.sm.effective is TradingState.ACTIVE and rp.qty == D("20")
    rp.bar(97.0)                                                       # -60: equity 9940 < 9950
    v = rp.eng.sm.view()
    assert v.state is TradingState.KILLED and "below floor" in v.reason
    assert rp.qty == 0                                                 # flattened by the kill
    for _ in range(3):
        rp.bar(99.0)
    assert rp.eng.sm.effective is TradingState.KILLED                  # recovery does not un-kill
    rp.eng.reset("operator reviewed")
    assert rp.eng.sm.effective is TradingState.ACTIVE
