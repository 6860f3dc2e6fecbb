"""Fees in the base coin are accounted exactly (issue 9 item 8).

Binance spot takes a buy's fee from the coin bought, so the account holds less than
the quantity filled. The paper exchange and the local Binance charge fees that way;
the ledger must hold exactly what the exchange holds, so a stop or flatten sell of the
whole ledger amount is accepted and a restart finds no balance mismatch.
"""
from decimal import Decimal as D

from hardkit_bot.model import Fill, Position, Side, TradingState


def test_position_nets_a_base_fee_and_realizes_the_exact_pnl():
    p = Position("BTC/USDT")
    p.apply(Side.BUY, D("0.01"), D("30000"), D("0"), fee_base=D("0.00001"))
    assert p.qty == D("0.00999")                                   # what the venue delivers
    assert p.qty * p.avg_price == D("300")                         # the whole notional is the cost
    pnl = p.apply(Side.SELL, D("0.00999"), D("31000"), D("0.30969"))   # a sell's fee is in quote
    assert p.qty == 0
    assert pnl == D("0.00999") * D("31000") - D("0.30969") - D("300")


def test_fee_in_a_third_currency_is_not_taken_from_the_position():
    f = Fill("t1", "c", "BTC/USDT", Side.BUY, D("0.01"), D("30000"), D("0.0002"), 0.0, fee_asset="BNB")
    assert not f.fee_in_base and not f.fee_in_quote


def test_buy_then_stop_sell_of_the_full_ledger_amount_and_a_clean_restart(rig):
    r = rig.buy("0.01234")                                         # fee 0.00001234 BTC: off the step grid
    [f] = rig.ex.order_trades("BTC/USDT", r.client_order_id)
    assert f.fee_asset == "BTC" and f.fee == D("0.00001234")
    held = rig.ex.balances().total("BTC")
    assert held == D("0.01232766") == rig.store.positions()["BTC/USDT"].qty
    cid = rig.eng.close_position("BTC/USDT", "stop-loss")         # sells what the ledger says it holds
    row = rig.store.order(cid)
    assert row["status"] == "FILLED" and D(row["qty"]) == D("0.01232"), row["last_error"]
    dust = rig.ex.balances().total("BTC")
    assert dust == rig.store.positions()["BTC/USDT"].qty == D("0.00000766")   # only dust, on both sides
    assert "BTC/USDT" not in rig.eng._pos_f and not rig.eng.stops.levels      # dust is no position
    rig.restart()
    assert rig.eng.sm.effective is TradingState.ACTIVE, rig.eng.sm.view().reason
    assert rig.report.mismatches == []
    r2 = rig.buy("0.01")                                           # the dust is sold with the next position
    assert r2.status.value == "FILLED"
    total = rig.store.positions()["BTC/USDT"].qty
    assert total == rig.ex.balances().total("BTC") == D("0.00000766") + D("0.01") - D("0.00001")
    assert D(rig.store.order(rig.eng.close_position("BTC/USDT", "flatten"))["qty"]) == D("0.00999")
