"""Slippage is reserved (issue 9 §7): at 300 bps the guard approved market buys needing 10,980
with 10,000 free (it reserved price_band_pct instead); the venue rejected 5/5 and the reject
breaker halted the bot. The reserve for a market buy is now fee + the configured slippage."""
from dataclasses import replace
from decimal import Decimal as D

from hardkit_bot.model import Instrument, Intent, OrderStatus, OrderType, Side, TradingState
from hardkit_bot.risk.pipeline import DenialCode, RiskLimits, RiskSnapshot, buy_cost, check, size_for_risk

from bot_helpers import Replay

INST = Instrument("BTC/USDT", "BTC", "USDT", D("0.01"), D("0.01"), D("0.01"), D("1000000"), D("10"))
LIM = RiskLimits(risk_per_trade_pct=D("10"), min_reward_risk=D("1"), max_order_notional=D("50000"),
                 max_open_positions=3, max_total_exposure=D("50000"), price_band_pct=D("2"),
                 max_orders_per_minute=50, stale_data_s=30.0, fee_rate=D("0.001"), slippage_bps=D("300"))
FREE = D("10000")


def snap() -> RiskSnapshot:
    return RiskSnapshot(state=TradingState.ACTIVE, now=1000.0, equity=FREE, free_quote=FREE, pending_buy_cost=D(0),
                        positions={}, pending_sell_qty={}, open_instruments=frozenset(), exposure=D(0),
                        last_price={"BTC/USDT": (D("1000"), 999.0)}, orders_last_minute=0, known_keys=frozenset())


def market_buy(qty: str) -> Intent:
    return Intent("k", "BTC/USDT", Side.BUY, D(qty), D("1000"), stop_price=D("900"), take_profit=D("1200"))


def test_market_buy_reserves_300_bps_of_slippage_not_the_price_band():
    assert buy_cost(D("1"), D("1000"), OrderType.MARKET, LIM) == D("1000") * D("1.001") * D("1.03")
    assert buy_cost(D("1"), D("1000"), OrderType.LIMIT, LIM) == D("1001")   # a limit price is the price
    fits, too_big = market_buy("9.69"), market_buy("9.70")                  # 10,000 free
    assert check(fits, snap(), LIM, {"BTC/USDT": INST}) is None             # needs 9,990.68
    d = check(too_big, snap(), LIM, {"BTC/USDT": INST})                     # needs 10,000.99 (the band's 2 % said 9,903.89)
    assert d is not None and d.code is DenialCode.INSUFFICIENT_BALANCE
    assert size_for_risk(FREE, D("1000"), D("900"), LIM, INST, FREE, D(0)) == D("9.69")


def test_at_300_bps_with_10000_free_the_venue_accepts_what_the_guard_sized(tmp_path, clock):
    rp = Replay(tmp_path, clock, fee_rate="0.001", slippage_bps="300",
                extra_risk='risk_per_trade_pct = "10"\nmax_order_notional = "20000"\nmax_total_exposure = "20000"\n'
                           'vol_z_enter = 50\nmax_daily_loss_pct = "50"\ndaily_loss_reduce_pct = "40"\n'
                           'max_drawdown_pct = "50"')                     # each round trip pays 2 x 3 % slippage
    for _ in range(20):
        rp.bar()
    inst, lim = rp.eng.instruments["BTC/USDT"], rp.eng.limits
    assert lim.slippage_bps == D("300")
    free = rp.eng.om.account.free("USDT")
    assert free == D("10000")
    outcomes = []
    for k in range(5):                                                     # the reproduction sent 5 buys
        qty = size_for_risk(free, D("100"), D("95"), lim, inst, free, D(0))
        r = rp.eng.om.submit(replace(market_buy(str(qty)), key=f"e{k}", ref_price=D("100.0"),
                                     stop_price=D("95"), take_profit=D("120")), "USDT")
        outcomes.append(r.status)
        rp.eng.close_position("BTC/USDT", "test exit")                     # flat again for the next entry
        rp.bar()
        free = rp.eng.om.account.free("USDT")
    assert outcomes == [OrderStatus.FILLED] * 5                            # none rejected by the venue
    assert rp.eng.sm.effective is TradingState.ACTIVE                      # so the reject breaker stayed quiet
    assert rp.eng.om.account.total("USDT") > 0
