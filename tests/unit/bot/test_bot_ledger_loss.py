"""A lost, restored or damaged ledger never makes the bot adopt old orders (issue 9 item 3).

Against the paper exchange (its own file, so it keeps the account's history as a venue
would): client ids are unique across ledgers, an order the exchange holds under our id
is adopted only if it is the intent, and start-up reconciliation compares the account's
trade history and balances with the ledger.
"""
import shutil
from decimal import Decimal as D

import pytest

from hardkit_bot.exchange.paper import PaperExchange
from hardkit_bot.model import CLIENT_ID_RE, Intent, OrderStatus, OrderType, Side, TradingState
from hardkit_bot.store import Store

from bot_helpers import config_text


def ledger_files(rig):
    """The ledger with its latch copy (`ledger.sqlite.state`): with the copy left behind, the
    latch cross-check halts first (test_bot_state); here reconciliation alone must catch it."""
    return [rig.tmp / n for n in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "ledger.sqlite.state")]


def test_client_ids_carry_a_ledger_epoch_within_binance_rules(tmp_path, clock):
    ids = []
    for n in range(2):       # two ledgers, e.g. the original and its replacement
        s = Store(tmp_path / f"l{n}.sqlite", clock)
        for k in range(3):
            ids.append(s.insert_intent(Intent(f"k{k}", "BTC/USDT", Side.BUY, D("0.01"), D("100")), "abcdef"))
        s.close()
    assert len(set(ids)) == 6                                     # the row ids repeat, the client ids do not
    assert all(CLIENT_ID_RE.match(i) for i in ids)
    worst = f"abcdef-{ids[0].split('-')[1]}-{10 ** 16 - 1}"       # the longest id a ledger can produce
    assert CLIENT_ID_RE.match(worst) and len(worst) == 32


def test_paper_exchange_refuses_ids_binance_would_refuse(rig):
    from hardkit_bot.exchange.base import OrderRejected
    with pytest.raises(OrderRejected, match="illegal client order id"):
        rig.ex.create_order("hk1 #1", "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"), None)
    with pytest.raises(OrderRejected, match="illegal client order id"):
        rig.ex.create_order("x" * 33, "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"), None)


def test_deleted_ledger_boots_halted_and_adopts_nothing(rig):
    old = [rig.buy("0.01").client_order_id, rig.buy("0.02").client_order_id]
    rig.store.close()
    for f in ledger_files(rig):
        f.unlink(missing_ok=True)
    rig.restart()
    v = rig.eng.sm.view()
    assert v.state is TradingState.HALTED
    assert "fresh ledger on an account with positions or history" in v.reason and "BTC" in v.reason
    assert rig.report.fresh_ledger and len(rig.report.foreign_trades) == 2
    assert rig.store.fill_ids() == set()                          # no old fill stamped into a new intent
    rig.eng.sm.reset("operator checked the account")               # even after a reset ...
    r = rig.buy("0.01")
    assert r.client_order_id not in old                            # ... a new intent gets a new id
    [o] = rig.exchange_orders(r.client_order_id)
    assert o.qty == D("0.01") and len(rig.exchange_orders()) == 3  # and is really sent, not adopted


def test_deleted_ledger_on_a_flat_account_with_history_boots_halted(rig):
    rig.buy("0.01")
    rig.eng.close_position("BTC/USDT", "test")
    assert not rig.ex.balances().total("BTC") >= D("0.0001")      # flat (dust at most)
    rig.store.close()
    for f in ledger_files(rig):
        f.unlink(missing_ok=True)
    rig.restart()
    v = rig.eng.sm.view()
    assert v.state is TradingState.HALTED and "2 trades the ledger does not have" in v.reason, v.reason


def test_fresh_ledger_on_a_fresh_account_boots_active(rig):
    assert rig.report.fresh_ledger and rig.eng.sm.effective is TradingState.ACTIVE


def test_restored_old_backup_halts_and_reuses_no_id(rig):
    rig.buy("0.01")
    rig.store.close()
    backup = rig.tmp / "backup"
    backup.mkdir()
    for f in ledger_files(rig):
        if f.exists():
            shutil.copy(f, backup / f.name)
    rig.restart()
    after_backup = [rig.buy("0.01").client_order_id for _ in range(2)]
    rig.store.close()
    for f in ledger_files(rig):
        f.unlink(missing_ok=True)
        if (backup / f.name).exists():
            shutil.copy(backup / f.name, f)
    rig.restart()
    v = rig.eng.sm.view()
    assert v.state is TradingState.HALTED
    assert "trades on the exchange the ledger does not have" in v.reason and "balance mismatch" in v.reason
    for cid in after_backup:
        assert rig.store.order(cid) is None                       # not adopted into the restored ledger
    rig.eng.sm.reset("operator: restored backup, account checked")
    r = rig.buy("0.01")
    assert r.client_order_id not in after_backup and r.status is OrderStatus.FILLED
    assert len(rig.exchange_orders(stops=False)) == 4             # sent as a new order
    rig.restart()                                                 # the foreign trades are known now
    assert rig.report.foreign_trades == [] and "trades on the exchange" not in rig.eng.sm.view().reason


def test_an_order_under_our_id_that_is_not_the_intent_is_refused_and_halts(rig):
    first = rig.buy("0.01").client_order_id
    inst, epoch, row = first.split("-")
    squatter = f"{inst}-{epoch}-{int(row) + 1}"                   # the id the next intent will get
    rig.ex.create_order(squatter, "BTC/USDT", Side.BUY, OrderType.LIMIT, D("0.05"), D("100.00"))
    r = rig.buy("0.01")
    assert r.client_order_id == squatter and r.status is OrderStatus.REJECTED
    row = rig.store.order(squatter)
    assert "refused adoption" in row["last_error"] and "qty 0.05 != 0.01" in row["last_error"]
    assert D(row["filled"]) == 0 and row["exchange_order_id"] is None
    v = rig.eng.sm.view()
    assert v.state is TradingState.HALTED and "refused to adopt" in v.reason


def test_an_order_placed_before_the_intent_existed_is_refused(rig, clock):
    first = rig.buy("0.01").client_order_id
    inst, epoch, row = first.split("-")
    squatter = f"{inst}-{epoch}-{int(row) + 1}"
    x = rig.cfg.exchange
    past = PaperExchange(rig.ex_path, {i.symbol: i for i in rig.cfg.instruments}, fee_rate=x["fee_rate"],
                         bar_seconds=1.0, clock=lambda: clock() - 600)   # the same account, ten minutes ago
    past.create_order(squatter, "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"), None)   # the very same shape
    past.close()
    r = rig.buy("0.01")
    assert r.client_order_id == squatter and r.status is OrderStatus.REJECTED
    err = rig.store.order(squatter)["last_error"]
    assert "placed 600s before the intent existed" in err and "qty" not in err and "side" not in err
    assert rig.eng.sm.effective is TradingState.HALTED


def test_deleted_ledger_of_a_running_bot_boots_halted_and_trades_nothing(bot):
    import signal
    import sqlite3
    bot.write_config(config_text(loop=0.05, bar=0.02))
    p = bot.start()
    paper = bot.state / "paper-exchange.sqlite"

    def traded():
        try:
            c = sqlite3.connect(f"file:{paper}?mode=ro", uri=True)
            try:
                return c.execute("SELECT COUNT(*) FROM trades").fetchone()[0] > 0
            finally:
                c.close()
        except sqlite3.Error:
            return False
    bot.wait_for(traded, timeout=60, what="a first trade")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    for f in bot.state.glob("ledger.sqlite*"):
        f.unlink()
    c = sqlite3.connect(f"file:{paper}?mode=ro", uri=True)
    before = c.execute("SELECT client_id FROM orders").fetchall()
    c.close()
    p2 = bot.start(max_steps=15)
    assert p2.wait(60) == 0, bot.logs()[-3000:]
    led = sqlite3.connect(f"file:{bot.state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        state, reason = led.execute("SELECT state, reason FROM trading_state").fetchone()
        fills = led.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
        orders = led.execute("SELECT client_order_id, intent_key FROM orders").fetchall()
    finally:
        led.close()
    assert state == "HALTED" and "fresh ledger on an account with positions or history" in reason, reason
    assert fills == 0                                               # no old fill adopted into a new intent
    assert all(k.startswith("adopted:") for _, k in orders)         # only resting orders found open, as such
    c = sqlite3.connect(f"file:{paper}?mode=ro", uri=True)
    after = c.execute("SELECT client_id FROM orders").fetchall()
    c.close()
    assert after == before                                          # the halted bot sent nothing
