"""An order that is briefly "not found" is never lost (issue 9 item 9)."""
from decimal import Decimal as D

from hardkit_bot.model import Intent, OrderStatus, OrderType, Side, TradingState

from bot_helpers import Rig


def limit_buy(rig, key, above_pct="0.5"):
    """A small limit buy near the market: it rests now and fills on a later bar if above it.

    Small, so the cash it spends while the ledger cannot see its fill trips no loss breaker."""
    last = rig.eng.market.last["BTC/USDT"][0]
    px = (last * (1 + D(above_pct) / 100)).quantize(D("0.01"))
    i = Intent(key, "BTC/USDT", Side.BUY, D("0.001"), px, order_type=OrderType.LIMIT, limit_price=px,
               stop_price=(px * D("0.99")).quantize(D("0.01")), take_profit=(px * D("1.03")).quantize(D("0.01")))
    return rig.eng.om.submit(i, "USDT")


def test_acknowledged_order_not_found_for_a_while_is_kept_and_its_fills_taken(tmp_path, clock):
    rig = Rig(tmp_path, clock, grace=5.0)
    r = limit_buy(rig, "rest")
    assert rig.store.order(r.client_order_id)["exchange_order_id"]            # acknowledged
    rig.ex.inject("lookup_miss", count=3)
    seen = []
    for _ in range(3):                                        # well past unknown_grace_s, "not found" each time
        clock.advance(4)
        rig.eng.step()
        seen.append(rig.store.order(r.client_order_id)["status"])
    assert seen == ["UNKNOWN"] * 3                            # unresolved, never ABANDONED
    clock.advance(2)
    rig.eng.step()                                            # the venue answers again: it filled meanwhile
    row = rig.store.order(r.client_order_id)
    assert row["status"] == OrderStatus.FILLED.value and D(row["filled"]) == D("0.001")
    rig.assert_books_agree()
    assert rig.eng.sm.effective is TradingState.ACTIVE


def test_reconciliation_revisits_a_ledger_order_the_exchange_shows_live(tmp_path, clock):
    rig = Rig(tmp_path, clock, grace=5.0)
    rig.ex.inject("timeout_accepted")                         # accepted, the answer is lost ...
    rig.ex.inject("lookup_miss", count=2)                     # ... and the venue cannot find it for a while
    r = limit_buy(rig, "ghost", above_pct="-1.5")               # rests well below the market
    assert r.status is OrderStatus.UNKNOWN
    clock.advance(6)
    rig.eng.step()
    assert rig.store.order(r.client_order_id)["status"] == OrderStatus.ABANDONED.value   # never acknowledged
    assert rig.exchange_orders(r.client_order_id)[0].status is OrderStatus.OPEN          # ... but it is live
    rig.restart()
    row = rig.store.order(r.client_order_id)
    assert row["status"] == OrderStatus.OPEN.value and row["exchange_order_id"]
    assert r.client_order_id in rig.report.recovered
