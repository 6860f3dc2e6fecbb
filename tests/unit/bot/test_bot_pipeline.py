"""Pre-trade pipeline: each check denies at its limit and not before; properties hold for any input."""
from dataclasses import replace
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hardkit_bot.model import Instrument, Intent, OrderType, Side, TradingState
from hardkit_bot.risk.pipeline import (SIZE_OR_STATE_CODES, DenialCode, RiskLimits, RiskSnapshot, buy_cost, check,
                                       size_for_risk, trade_risk)

INST = Instrument("BTC/USDT", "BTC", "USDT", D("0.01"), D("0.001"), D("0.001"), D("100"), D("10"))
INSTS = {INST.symbol: INST}
LIM = RiskLimits(risk_per_trade_pct=D("1"), min_reward_risk=D("2"), max_order_notional=D("5000"),
                 max_open_positions=2, max_total_exposure=D("8000"), price_band_pct=D("2"),
                 max_orders_per_minute=5, stale_data_s=10.0, fee_rate=D("0.001"))
NOW = 1000.0


def snap(**kw) -> RiskSnapshot:
    base = dict(state=TradingState.ACTIVE, now=NOW, equity=D("100000"), free_quote=D("100000"), pending_buy_cost=D(0),
                positions={}, pending_sell_qty={}, open_instruments=frozenset(), exposure=D(0),
                last_price={"BTC/USDT": (D("1000"), NOW - 1)}, orders_last_minute=0, known_keys=frozenset())
    base.update(kw)
    return RiskSnapshot(**base)


def entry(qty="1", price="1000", stop="990", tp="1020", **kw) -> Intent:
    return Intent(key=kw.pop("key", "k1"), instrument="BTC/USDT", side=Side.BUY, qty=D(qty), ref_price=D(price),
                  stop_price=D(stop) if stop else None, take_profit=D(tp) if tp else None, **kw)


def code(intent, s=None):
    d = check(intent, s or snap(), LIM, INSTS)
    return d.code if d else None


def test_a_sane_entry_passes():
    assert code(entry()) is None


@pytest.mark.parametrize("state,expected", [(TradingState.REDUCING, DenialCode.STATE_REDUCING),
                                            (TradingState.HALTED, DenialCode.STATE_HALTED),
                                            (TradingState.KILLED, DenialCode.STATE_KILLED)])
def test_state_blocks_entries_but_not_exits(state, expected):
    s = snap(state=state, positions={"BTC/USDT": D("2")})
    assert code(entry(), s) is expected
    sell = Intent("x", "BTC/USDT", Side.SELL, D("2"), D("1000"), protective=True)
    assert code(sell, s) is None
    assert code(replace(sell, protective=False, reduce_only=True), s) is None


def test_duplicate_intent_and_malformed_values():
    assert code(entry(), snap(known_keys=frozenset({"k1"}))) is DenialCode.DUPLICATE_INTENT
    assert code(entry(qty="NaN")) is DenialCode.INVALID_QUANTITY
    assert code(entry(qty="-1")) is DenialCode.INVALID_QUANTITY
    assert code(entry(price="-5")) is DenialCode.INVALID_PRICE
    assert code(entry(price="Infinity")) is DenialCode.INVALID_PRICE
    assert code(replace(entry(), instrument="ETH/USDT")) is DenialCode.UNKNOWN_INSTRUMENT


def test_precision_min_max_and_notional_edges():
    assert code(entry(qty="1.0005")) is DenialCode.QTY_PRECISION
    assert code(entry(qty="0.001", price="1000", stop="999.9", tp="1000.3")) is DenialCode.NOTIONAL_BELOW_MIN  # 1.0 < 10
    assert code(entry(qty="0.010", stop="999", tp="1003")) is None                                              # notional exactly 10
    lim = replace(LIM, max_order_notional=D("1e9"), max_total_exposure=D("1e9"), risk_per_trade_pct=D("10"))
    big = entry(qty="100.001", stop="999.9", tp="1000.3")
    assert check(big, snap(equity=D("1e9"), free_quote=D("1e9")), lim, INSTS).code is DenialCode.QTY_ABOVE_MAX
    limit_px = replace(entry(), order_type=OrderType.LIMIT, limit_price=D("1000.005"))
    assert code(limit_px) is DenialCode.PRICE_PRECISION


def test_price_band_at_the_edge():
    at_edge = replace(entry(stop="1000", tp="1060"), order_type=OrderType.LIMIT, limit_price=D("1020"))
    assert code(replace(at_edge, stop_price=D("1010"))) is None                       # exactly 2 %
    over = replace(at_edge, limit_price=D("1020.01"), stop_price=D("1010"), take_profit=D("1060"))
    assert code(over) is DenialCode.PRICE_BAND


def test_stale_and_missing_market_data():
    assert code(entry(), snap(last_price={"BTC/USDT": (D("1000"), NOW - 10)})) is None
    assert code(entry(), snap(last_price={"BTC/USDT": (D("1000"), NOW - 10.01)})) is DenialCode.STALE_MARKET_DATA
    assert code(entry(), snap(last_price={})) is DenialCode.NO_MARKET_DATA


def test_max_order_notional_edge():
    lim = replace(LIM, risk_per_trade_pct=D("10"))
    ok = entry(qty="5", stop="999", tp="1003")      # 5000 exactly
    assert check(ok, snap(), lim, INSTS) is None
    assert check(replace(ok, qty=D("5.001")), snap(), lim, INSTS).code is DenialCode.MAX_ORDER_NOTIONAL


def test_free_balance_counts_pending_orders():
    i = entry()
    cost = buy_cost(i.qty, i.price, i.order_type, LIM)
    assert code(i, snap(free_quote=cost)) is None
    assert code(i, snap(free_quote=cost + 50, pending_buy_cost=D("50.01"))) is DenialCode.INSUFFICIENT_BALANCE


def test_risk_per_trade_from_stop_distance_and_adaptive_sizing():
    s = snap(equity=D("4000"))                      # budget 1 % = 40, below the notional cap
    qty = size_for_risk(D("4000"), D("1000"), D("990"), LIM, INST, D("100000"), D(0))
    assert qty > 0 and trade_risk(qty, D("1000"), D("990"), LIM.fee_rate) <= 40
    assert code(entry(qty=str(qty)), s) is None
    assert code(entry(qty=str(qty + INST.step_size)), s) is DenialCode.RISK_PER_TRADE
    assert code(entry(stop=None)) is DenialCode.MISSING_STOP
    assert code(entry(stop="1000")) is DenialCode.MISSING_STOP


def test_minimum_reward_to_risk():
    assert code(entry(stop="990", tp="1020")) is None            # exactly 2.0
    assert code(entry(stop="990", tp="1019.99")) is DenialCode.REWARD_RISK
    assert code(entry(tp=None)) is DenialCode.MISSING_TARGET


def test_portfolio_limits():
    s = snap(open_instruments=frozenset({"ETH/USDT", "SOL/USDT"}))
    assert code(entry(), s) is DenialCode.MAX_OPEN_POSITIONS
    assert code(entry(), snap(exposure=D("7000"))) is None           # 7000 + 1000 == 8000
    assert code(entry(), snap(exposure=D("7000.01"))) is DenialCode.MAX_TOTAL_EXPOSURE


def test_order_rate_throttle():
    assert code(entry(), snap(orders_last_minute=4)) is None
    assert code(entry(), snap(orders_last_minute=5)) is DenialCode.ORDER_RATE


def test_reduce_only_cannot_exceed_position_or_buy():
    s = snap(positions={"BTC/USDT": D("1")}, pending_sell_qty={"BTC/USDT": D("0.4")})
    sell = Intent("x", "BTC/USDT", Side.SELL, D("0.6"), D("1000"), reduce_only=True)
    assert code(sell, s) is None
    assert code(replace(sell, qty=D("0.601")), s) is DenialCode.REDUCE_ONLY_EXCEEDS_POSITION
    assert code(replace(sell, side=Side.BUY, protective=True), s) is DenialCode.PROTECTIVE_MUST_SELL


# ---- property-based --------------------------------------------------------------------------

decs = lambda lo, hi, places=3: st.decimals(lo, hi, places=places, allow_nan=False, allow_infinity=False)  # noqa: E731


@st.composite
def intents(draw, last: D):
    """Mostly plausible intents around the last price, so that many are approved and checked."""
    q2 = D("0.01")
    price = (last * (1 + draw(decs("-0.03", "0.03", 4)))).quantize(q2)
    qty = draw(decs("0.001", "8", 3))
    key = draw(st.text("abcd", min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        return Intent(key, "BTC/USDT", Side.SELL, qty, price, reduce_only=True, protective=draw(st.booleans()))
    limit = price if draw(st.booleans()) else None
    stop = None if draw(st.integers(0, 9)) == 0 else (price * (1 - draw(decs("0.001", "0.1", 3)))).quantize(q2)
    tp = None if stop is None else (price + (price - stop) * draw(decs("0.5", "5", 2))).quantize(q2)
    return Intent(key, "BTC/USDT", Side.BUY, qty, price,
                  order_type=OrderType.LIMIT if limit is not None else OrderType.MARKET, limit_price=limit,
                  stop_price=stop, take_profit=tp)


@st.composite
def steps(draw):
    out = []
    for _ in range(draw(st.integers(1, 25))):
        last = draw(decs("500", "1500", 2))
        state = draw(st.sampled_from([TradingState.ACTIVE] * 4 + list(TradingState)))
        out.append((draw(intents(last)), last, state, draw(st.integers(0, 6))))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=steps(), equity=decs("1000", "50000", 2))
def test_no_sequence_of_inputs_produces_an_order_that_breaks_a_limit(seq, equity):
    """Simulate a portfolio: every approved order is filled; after each, every limit must still hold."""
    cash, pos, keys = equity, D(0), set()
    for intent, last, state, rate in seq:
        s = snap(state=state, equity=cash + pos * last, free_quote=cash, positions={"BTC/USDT": pos} if pos else {},
                 open_instruments=frozenset({"BTC/USDT"}) if pos else frozenset(), exposure=pos * last,
                 last_price={"BTC/USDT": (last, NOW)}, orders_last_minute=rate, known_keys=frozenset(keys))
        d = check(intent, s, LIM, INSTS)
        if d is not None:
            continue
        keys.add(intent.key)
        event("approved reduce-only" if intent.reduce_only else "approved entry")
        p = intent.price
        notional = intent.qty * p
        assert intent.key not in s.known_keys
        assert intent.qty % INST.step_size == 0
        if intent.reduce_only or intent.protective:
            assert intent.side is Side.SELL and intent.qty <= pos
            pos -= intent.qty
            cash += notional * (1 - LIM.fee_rate)
            continue
        assert state is TradingState.ACTIVE
        assert rate < LIM.max_orders_per_minute
        assert INST.min_qty <= intent.qty <= INST.max_qty and notional >= INST.min_notional
        assert notional <= LIM.max_order_notional
        assert abs(p - last) / last * 100 <= LIM.price_band_pct
        assert buy_cost(intent.qty, p, intent.order_type, LIM) <= cash
        assert trade_risk(intent.qty, p, intent.stop_price, LIM.fee_rate) <= s.equity * LIM.risk_per_trade_pct / 100
        assert (intent.take_profit - p) / (p - intent.stop_price) >= LIM.min_reward_risk
        assert s.exposure + notional <= LIM.max_total_exposure
        pos += intent.qty
        cash -= notional * (1 + LIM.fee_rate)
        assert cash >= 0


@settings(max_examples=300, deadline=None)
@given(qty=decs("0.001", "1000", 3), pos_extra=decs("0", "10", 3), state=st.sampled_from(list(TradingState)),
       equity=decs("0", "100", 2), free=decs("0", "10", 2), rate=st.integers(0, 10 ** 6),
       exposure=decs("0", "1e9", 2), protective=st.booleans(), age=st.floats(0, 1e6),
       last=decs("0.01", "1e6", 2))
def test_reduce_only_is_never_denied_for_size_or_state(qty, pos_extra, state, equity, free, rate, exposure,
                                                       protective, age, last):
    s = snap(state=state, equity=equity, free_quote=free, positions={"BTC/USDT": qty + pos_extra},
             orders_last_minute=rate, exposure=exposure, last_price={"BTC/USDT": (last, NOW - age)},
             open_instruments=frozenset({"A", "B", "C"}))
    i = Intent("r", "BTC/USDT", Side.SELL, qty, D("1000"), reduce_only=not protective, protective=protective)
    d = check(i, s, LIM, INSTS)
    assert d is None or d.code not in SIZE_OR_STATE_CODES, d
    assert d is None   # well formed, within the position: always allowed
