"""The order path in-process: timeouts, duplicate ids, rejects, partial fills, reconciliation."""
from decimal import Decimal as D

import pytest

from hardkit_bot.model import OrderStatus, OrderType, Side, TradingState
from hardkit_bot.risk.pipeline import DenialCode

from bot_helpers import Rig


def test_plain_order_fills_with_fees_and_slippage(rig):
    r = rig.buy()
    assert r.status is OrderStatus.FILLED
    [o] = rig.exchange_orders(r.client_order_id)
    last = rig.eng.market.last["BTC/USDT"][0]
    assert o.avg_price > last                                    # adverse slippage on a buy
    [f] = rig.ex.order_trades("BTC/USDT", r.client_order_id)
    assert (f.fee, f.fee_asset) == ((f.qty * D("0.001")).quantize(D("1e-8")), "BTC")   # Binance: a buy pays in base
    rig.assert_books_agree()


def test_timeout_after_accept_is_resolved_by_client_id_not_resent(rig):
    rig.ex.inject("timeout_accepted")
    r = rig.buy()
    assert r.status is OrderStatus.FILLED
    assert len(rig.exchange_orders(r.client_order_id)) == 1
    assert len(rig.exchange_orders()) == 1
    row = rig.store.order(r.client_order_id)
    assert "timeout" in row["last_error"]
    rig.assert_books_agree()


def test_lost_request_stays_unknown_blocks_entries_then_is_abandoned(rig, clock):
    rig.ex.inject("timeout_lost")
    r = rig.buy()
    assert r.status is OrderStatus.UNKNOWN
    assert rig.exchange_orders() == []
    blocked = rig.buy()
    assert blocked.denial.code is DenialCode.UNRESOLVED_ORDER     # no doubling up while unknown
    clock.advance(6)                                              # past unknown_grace_s
    rig.eng.step()
    assert rig.store.order(r.client_order_id)["status"] == OrderStatus.ABANDONED.value
    assert rig.exchange_orders(r.client_order_id) == []           # never re-sent
    assert rig.buy().status is OrderStatus.FILLED                 # the instrument is usable again


def test_duplicate_id_rejection_means_fetch_it(rig):
    rig.ex.inject("duplicate_response")
    r = rig.buy()
    assert r.status is OrderStatus.FILLED
    assert len(rig.exchange_orders()) == 1
    assert rig.store.order(r.client_order_id)["last_error"] == "duplicate client id"
    rig.assert_books_agree()


def test_exchange_enforces_client_id_uniqueness(rig):
    from hardkit_bot.exchange.base import DuplicateClientOrderId
    rig.ex.create_order("x-1", "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"), None)
    with pytest.raises(DuplicateClientOrderId):
        rig.ex.create_order("x-1", "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"), None)


def test_reject_is_recorded_and_counted(rig):
    rig.ex.inject("reject")
    r = rig.buy()
    assert r.status is OrderStatus.REJECTED and rig.exchange_orders() == []
    assert rig.eng.activity.count("rejects", rig.clock()) == 1


def test_partial_fill_completes_on_the_next_bar(rig, clock):
    rig.ex.inject("partial", arg=0.5)
    r = rig.buy("0.02")
    assert r.status is OrderStatus.PARTIALLY_FILLED
    assert D(rig.store.order(r.client_order_id)["filled"]) == D("0.01")
    clock.advance(2)
    rig.eng.step()
    row = rig.store.order(r.client_order_id)
    assert row["status"] == "FILLED" and D(row["filled"]) == D("0.02")
    assert len(rig.ex.order_trades("BTC/USDT", r.client_order_id)) == 2
    rig.assert_books_agree()


def test_reconcile_marks_foreign_orders_external_and_boots_reducing(rig):
    rig.ex.create_order("manual-7", "BTC/USDT", Side.BUY, OrderType.LIMIT, D("0.01"), D("100.00"))
    before = len(rig.exchange_orders())
    rig.restart()
    assert rig.eng.sm.effective is TradingState.REDUCING
    assert "foreign open orders" in rig.eng.sm.view().reason and "manual-7" in rig.eng.sm.view().reason
    assert rig.store.order("manual-7")["status"] == "EXTERNAL"
    assert len(rig.exchange_orders()) == before                  # nothing invented, nothing cancelled
    assert rig.exchange_orders("manual-7")[0].status is OrderStatus.OPEN


def test_reconcile_adopts_our_prefix_orders_the_ledger_lost(rig):
    rig.ex.create_order("hk1-999", "BTC/USDT", Side.BUY, OrderType.LIMIT, D("0.01"), D("100.00"))
    rig.restart()
    row = rig.store.order("hk1-999")
    assert row["intent_key"].startswith("adopted:")
    assert rig.eng.sm.effective is TradingState.REDUCING and "adopted" in rig.eng.sm.view().reason
    # REDUCING lets no entry rest: the adopted buy was cancelled on the first iteration, and says so
    assert row["status"] == "CANCELED" and rig.exchange_orders("hk1-999")[0].status is OrderStatus.CANCELED


def test_reconcile_balance_mismatch_halts_and_says_why(rig):
    rig.buy()
    with rig.ex._tx():
        rig.ex.db.execute("UPDATE balances SET free = CAST(free AS REAL) + 0.5 WHERE asset = 'BTC'")
    n = len(rig.exchange_orders())
    rig.restart()
    v = rig.eng.sm.view()
    assert v.state is TradingState.HALTED and "balance mismatch" in v.reason and "BTC" in v.reason
    assert len(rig.exchange_orders(stops=False)) == n             # nothing traded (its position gets a resting stop)


def test_clean_restart_after_trading_stays_active(rig):
    rig.buy()
    rig.restart()
    assert rig.eng.sm.effective is TradingState.ACTIVE, rig.eng.sm.view().reason
    rig.assert_books_agree()


def test_reject_spike_halts_the_bot(rig):
    rig.ex.inject("reject", count=5)
    for _ in range(5):
        assert rig.buy().status is OrderStatus.REJECTED
    rig.eng.step()
    v = rig.eng.sm.view()
    assert v.state is TradingState.HALTED and "5 rejects in the last minute" in v.reason


def test_history_warms_indicators_but_never_trades(tmp_path, clock):
    from hardkit_bot.strategy import Signal, TrendATR
    import shutil
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = Rig(tmp_path / "a", clock)
    r.store.close()
    r.ex.close()
    clock.advance(5000)                                           # 5000 bars of market history since the last look
    shutil.copy(tmp_path / "a" / "paper.sqlite", tmp_path / "b" / "paper.sqlite")
    r2 = Rig(tmp_path / "b", clock)                               # a bot starting against that market
    st = r2.eng.strats["BTC/USDT"]
    assert st.n >= 100                                            # warm-up bars were fed
    hist = r2.ex.candles("BTC/USDT", 0)
    probe = TrendATR(3, 8, 5, 0.5)
    assert any(probe.on_bar(b) is not Signal.NONE for b in hist[-st.n:])   # history did contain signals
    assert r2.store.orders() == []                                # ... and none of them traded


def test_paper_gap_and_volatility_spike_faults(tmp_path, clock):
    r = Rig(tmp_path, clock)
    before = r.ex.ticker("BTC/USDT")[0]
    r.ex.inject("gap", arg=-10.0)
    r.ex.ticker("BTC/USDT")                                       # arms the gap at the next bar
    clock.advance(2)
    after = r.ex.ticker("BTC/USDT")[0]
    assert after < before * D("0.93")                             # ~10 % down (plus the walk)
    calm = [b.high - b.low for b in r.ex.candles("BTC/USDT", clock() - 3)]
    r.ex.inject("vol_spike", arg=8.0)
    r.ex.ticker("BTC/USDT")
    clock.advance(3)
    wild = [b.high - b.low for b in r.ex.candles("BTC/USDT", clock() - 2.5)]
    assert min(wild) > 4 * max(calm)


def test_activity_counters_survive_a_restart(rig):
    rig.ex.inject("reject", count=5)
    for _ in range(3):
        rig.buy()
    rig.restart()                                                 # a crash-loop must not reset the breaker
    for _ in range(2):
        rig.buy()
    rig.eng.step()
    assert rig.eng.sm.effective is TradingState.HALTED and "5 rejects" in rig.eng.sm.view().reason


def test_status_reports_what_the_pre_trade_path_cost_the_orders(rig):
    assert rig.eng.status()["pretrade_us"] == {"orders": 0}
    rig.buy()
    rig.buy()
    p = rig.eng.status()["pretrade_us"]
    assert p["orders"] == 2 and 0 < p["p50"] <= p["p99"]
