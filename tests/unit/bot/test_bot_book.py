"""The in-memory book the risk snapshot reads never differs from the ledger.

The snapshot no longer queries SQLite per order (issue 9, "figures to restate"); these
tests drive every kind of ledger write and compare the snapshot with one computed from
the ledger's own rows, and prove the book does not grow with history.
"""
import random
from decimal import ROUND_DOWN, Decimal as D

import pytest

from hardkit_bot.exchange.paper import PaperExchange
from hardkit_bot.marketdata import MarketData
from hardkit_bot.model import ExchangeOrder, Fill, Instrument, Intent, OrderStatus, OrderType, Side
from hardkit_bot.orders import OrderManager
from hardkit_bot.risk import pipeline
from hardkit_bot.risk.limits import ActivityRate
from hardkit_bot.risk.pipeline import RiskLimits
from hardkit_bot.risk.state import StateMachine
from hardkit_bot.store import Store

SYMS = ("BTC/USDT", "ETH/USDT")
INSTS = {s: Instrument(s, s.split("/")[0], "USDT", D("0.01"), D("0.001"), D("0.001"), D("1000"), D("1")) for s in SYMS}
LIM = RiskLimits(D("1"), D("1"), D("5000"), 3, D("8000"), D("2"), 50, 30.0, D("0.001"), D("25"))


@pytest.fixture
def om(tmp_path, clock):
    store = Store(tmp_path / "ledger.sqlite", clock)
    venue = PaperExchange(":memory:", INSTS, clock=clock)
    market = MarketData(clock)
    for s in SYMS:
        market.on_tick(s, "100", clock())
    m = OrderManager(store, venue, StateMachine(store, clock), LIM, INSTS, "hk1", market,
                     ActivityRate({"orders": 60, "rejects": 5, "cancels": 30}), clock)
    m.refresh_account()
    return m


def from_ledger(om):
    """The snapshot's book fields computed straight from the ledger's rows (the pre-cache way).
    Dust (what base-coin fees leave below the minimum size) is in the ledger but no position."""
    positions = {s: p.qty for s, p in om.store.positions().items() if INSTS[s].holds(p.qty)}
    pending_buy, pending_sell, unresolved, buys = D(0), {}, set(), set()
    exposure = sum((q * D("100") for q in positions.values()), D(0))
    for r in om.store.live_orders():
        rem, px = D(r["qty"]) - D(r["filled"]), D(r["limit_price"] or r["ref_price"])
        if r["status"] in ("UNKNOWN", "PENDING_SUBMIT"):
            unresolved.add(r["instrument"])
        if r["side"] == "buy":
            pending_buy += pipeline.buy_cost(rem, px, OrderType(r["order_type"]), LIM)
            exposure += rem * px
            buys.add(r["instrument"])
        else:
            pending_sell[r["instrument"]] = pending_sell.get(r["instrument"], D(0)) + rem
    return (positions, pending_buy, pending_sell, frozenset(unresolved), frozenset(buys | set(positions)), exposure)


def snap_fields(om):
    s = om.snapshot("USDT")
    return (dict(s.positions), s.pending_buy_cost, dict(s.pending_sell_qty), s.unresolved_instruments,
            s.open_instruments, s.exposure)


def held(store, sym):
    p = store.positions().get(sym)
    return p.qty if p else D(0)


def test_book_follows_every_kind_of_ledger_write(om):
    """Intents of every type (resting stop-loss sells too), status changes, fills with the
    fee in the base coin (buys: the position is the quantity less the fee, dust is left) or
    in quote, adopted orders: after each, the snapshot equals the ledger's rows."""
    rng = random.Random(9)
    store = om.store
    live: list[str] = []
    dust_seen = stops_seen = False
    for k in range(300):
        op = rng.choice(("intent", "status", "fill", "foreign"))
        sym = rng.choice(SYMS)
        if op == "intent" or not live:
            side = Side.SELL if held(store, sym) >= D("0.004") and rng.random() < 0.4 else Side.BUY
            typ = rng.choice((OrderType.MARKET, OrderType.LIMIT) + ((OrderType.STOP,) if side is Side.SELL else ()))
            stops_seen |= typ is OrderType.STOP
            cid = store.insert_intent(Intent(f"k{k}", sym, side, D("0.01"), D("100"), typ,
                                             D("99.00") if typ is OrderType.LIMIT else None,
                                             stop_price=D("95.00") if typ is OrderType.STOP else None), "hk1")
            live.append(cid)
        elif op == "status":
            cid = rng.choice(live)
            status = rng.choice((OrderStatus.UNKNOWN, OrderStatus.OPEN, OrderStatus.CANCELED, OrderStatus.REJECTED))
            store.update_order(cid, status)
            if status.terminal:
                live.remove(cid)
        elif op == "fill":
            cid = rng.choice(live)
            row = store.order(cid)
            side, inst = Side(row["side"]), INSTS[row["instrument"]]
            qty = D("0.005")
            if side is Side.SELL:   # at most what is held, on the step grid: a base-coin fee leaves dust
                qty = min(qty, (held(store, inst.symbol) / inst.step_size).to_integral_value(ROUND_DOWN) * inst.step_size)
                if qty < inst.min_qty:
                    continue
            fee, asset = (D("0.0000075"), inst.base) if side is Side.BUY else (D("0.0005"), inst.quote)
            store.apply_fill(Fill(f"t{k}", cid, inst.symbol, side, qty, D("100"), fee, 0.0, asset),
                             max(inst.min_qty, inst.step_size))
            q = held(store, inst.symbol)
            dust_seen |= D(0) < q < inst.min_qty
        else:
            store.insert_foreign_order(ExchangeOrder(f"x{k}", f"hk1-x{k}", sym, Side.BUY, OrderType.LIMIT, D("0.02"),
                                                     D("98"), OrderStatus.OPEN, D(0), None, 0.0), OrderStatus.OPEN, "adopted")
            live.append(f"hk1-x{k}")
        assert snap_fields(om) == from_ledger(om), f"after step {k} ({op})"
    assert stops_seen and dust_seen


def test_a_rolled_back_write_leaves_the_book_as_the_ledger_is(om):
    om.snapshot("USDT")
    with pytest.raises(RuntimeError):
        with om.store.tx() as c:
            c.execute("UPDATE orders SET status = 'OPEN'")
            c.execute("INSERT INTO positions VALUES ('BTC/USDT', '5', '100', '0', '0', 0)")
            raise RuntimeError("crash mid-transaction")
    assert snap_fields(om) == from_ledger(om) and om.snapshot("USDT").positions == {}


def reads_during(om, fn) -> list[str]:
    statements: list[str] = []
    om.store.conn.set_trace_callback(statements.append)
    try:
        fn()
    finally:
        om.store.conn.set_trace_callback(None)
    return [q for q in statements if q.lstrip().upper().startswith("SELECT")]


def test_the_book_costs_no_sql_and_never_reads_history(om):
    om.snapshot("USDT")
    om.store.insert_intent(Intent("k", "BTC/USDT", Side.BUY, D("0.01"), D("100")), "hk1")   # the book changes
    assert reads_during(om, lambda: om.snapshot("USDT")) == []          # fed by the triggers, not by reading
    with pytest.raises(RuntimeError), om.store.tx():
        raise RuntimeError("a transaction that does not commit")
    reads = reads_during(om, lambda: om.snapshot("USDT"))              # resync from the ledger ...
    assert len(reads) == 2
    orders = [q for q in reads if " orders " in q]
    plan = [tuple(r)[-1] for r in om.store.conn.execute("EXPLAIN QUERY PLAN " + orders[0])]
    assert any("USING INDEX orders_status" in p for p in plan) and not any(p.startswith("SCAN") for p in plan)
    assert reads_during(om, lambda: om.snapshot("USDT")) == []          # ... once


def test_the_start_check_sees_a_book_that_differs_from_the_ledger_and_repairs_it(om, tmp_path):
    """A write that bypassed the store's connection (so no trigger fed the mirror) is what
    `matches_ledger` exists for: it says so, and the snapshot is the ledger's again."""
    om.store.insert_intent(Intent("k", "BTC/USDT", Side.BUY, D("0.01"), D("100")), "hk1")
    assert om.book.matches_ledger()
    import sqlite3
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    other.execute("UPDATE orders SET status = 'CANCELED'")
    other.execute("INSERT INTO positions VALUES ('ETH/USDT', '0.5', '100', '0', '0', 0)")
    other.close()
    assert snap_fields(om) != from_ledger(om)
    assert not om.book.matches_ledger()
    assert snap_fields(om) == from_ledger(om) and om.book.matches_ledger()


def test_reading_the_book_reuses_what_the_last_write_built(om):
    """The aggregates are built by the write (inside its transaction), not by the order that reads them."""
    om.store.insert_intent(Intent("k", "BTC/USDT", Side.BUY, D("0.01"), D("100")), "hk1")
    first = om.book.state()
    assert om.book.state() is first and om.snapshot("USDT").pending_buy_cost == first.buy_cost > 0
    with om.store.tx() as c:
        c.execute("UPDATE orders SET status = 'CANCELED'")
        assert om.book._state.buy_cost == 0          # rebuilt by the trigger, before the commit
    assert om.book.state().buy_cost == 0 and om.snapshot("USDT").pending_buy_cost == 0


def test_an_update_of_columns_the_book_does_not_read_rebuilds_nothing(om):
    """Setting the client id after the intent's insert (or an exchange id, an error) cannot change the
    book: the trigger does not fire, so the write builds no new state; a status change still does."""
    cid = om.store.insert_intent(Intent("k", "BTC/USDT", Side.BUY, D("0.01"), D("100")), "hk1")
    state = om.book.state()
    with om.store.tx() as c:
        c.execute("UPDATE orders SET exchange_order_id = 'x1', last_error = 'e' WHERE client_order_id = ?", (cid,))
    assert om.book.state() is state
    om.store.update_order(cid, OrderStatus.CANCELED)
    assert om.book.state().buy_cost == 0 and snap_fields(om) == from_ledger(om)


def test_a_replay_ledger_builds_the_book_when_it_is_read_and_the_same_book(tmp_path, clock):
    """ReplayLedger defers the rebuild from the write to the next read (book_rebuild_on_write): a write
    leaves the old state object in place, the next read builds the state the ledger's rows give."""
    from hardkit_bot.backtest import ReplayLedger
    store = ReplayLedger(":memory:", clock)
    market = MarketData(clock)
    for s in SYMS:
        market.on_tick(s, "100", clock())
    m = OrderManager(store, PaperExchange(":memory:", INSTS, clock=clock), StateMachine(store, clock), LIM, INSTS,
                     "hk1", market, ActivityRate({"orders": 60, "rejects": 5, "cancels": 30}), clock)
    before = m.book.state()
    cid = store.insert_intent(Intent("k", "BTC/USDT", Side.BUY, D("0.01"), D("100")), "hk1")
    store.update_order(cid, OrderStatus.OPEN, exchange_order_id="e1", sent=True)
    store.apply_fill(Fill("t1", "x", "ETH/USDT", Side.BUY, D("0.5"), D("100"), D("0"), clock()))
    assert m.book._state is before                        # nothing built by the writes
    assert [type(o) for o in m.book._live.values()] == [tuple]   # the order's row, converted when read
    assert m.book.state().buy_cost > 0 and m.book.state().held == {"ETH/USDT": D("0.5")}
    assert m.book.matches_ledger()
    store.update_order(cid, OrderStatus.CANCELED)
    assert m.book.state().buy_cost == 0 and m.book.matches_ledger()
