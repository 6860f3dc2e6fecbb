"""Benchmark: the whole pre-trade path an order pays, at ledgers of 1k, 10k and 100k orders.

Per order the bot builds a risk snapshot (positions, live orders, equity, balances,
throttle) and runs the check pipeline on it (`OrderManager.submit`, before the decision
is recorded). Both are timed together on a file ledger (WAL, FULL) that holds N past
orders with their fills, decisions and audit records plus a few live orders. Four cases:
- the book unchanged since the previous order (a mix of approved entries, denied entries
  and reduce-only exits, one after another);
- a ledger write just before each order (an order status update through the store,
  committed with fsync, untimed: the book follows it through the ledger's triggers), the
  timer started on the first instruction after the commit returns;
- as a control, 1 ms idle before each order with no change: a process that slept (as in an
  fsync) finds cold caches on a shared machine, whatever the code does;
- the live loop: `Engine.step()` itself on the paper exchange, 1 ms idle between iterations
  (the loop's wait), every order's pre-trade path as `OrderManager.submit` measures it
  (`status`: `pretrade_us`). A bench strategy signals on every bar (enter, then exit) so
  that each iteration makes an order; everything else is the production loop: the fills,
  resting stops and decisions it writes (fsync'd) come before the next order.
Target: p99 <= 50 µs at 100k and no growth with history (the 100k/1k ratios are printed;
the machine is shared: compare figures of one run).
Run: .venv/bin/python bench/bot_pretrade.py [--sizes 1000,10000,100000] [--orders N]
"""
import argparse
import logging
from dataclasses import replace
import statistics
import tempfile
import time
from decimal import Decimal as D
from pathlib import Path

from hardkit_bot.backtest import ReplayLedger
from hardkit_bot.config import load
from hardkit_bot.engine import Engine
from hardkit_bot.exchange.market import generate
from hardkit_bot.exchange.paper import PaperExchange
from hardkit_bot.marketdata import MarketData
from hardkit_bot.model import Fill, Instrument, Intent, OrderStatus, OrderType, Side
from hardkit_bot.orders import OrderManager
from hardkit_bot.risk import pipeline
from hardkit_bot.risk.limits import ActivityRate
from hardkit_bot.risk.pipeline import RiskLimits
from hardkit_bot.risk.state import StateMachine
from hardkit_bot.store import Store
from hardkit_bot.strategy import Signal, TrendATR

EXAMPLE = Path(__file__).resolve().parents[1] / "bot" / "examples" / "paper.toml"
#: Limits that let the live-loop case trade on every bar (as in bench/bot_replay.py).
RELAXED = {"max_consecutive_losses": 100_000, "max_drawdown_pct": D(99), "max_daily_loss_pct": D(99),
           "daily_loss_reduce_pct": D(98), "equity_floor": D(0), "vol_z_enter": 1e9, "vol_gap_pct": 99.0,
           "max_orders_per_minute": 100_000, "breaker_orders_per_minute": 100_000,
           "breaker_cancels_per_minute": 100_000, "min_reward_risk": D("0.1")}
SYM = "BTC/USDT"
INST = Instrument(SYM, "BTC", "USDT", D("0.01"), D("0.00001"), D("0.0001"), D("1000"), D("10"))
LIM = RiskLimits(D("0.5"), D("1.5"), D("2000"), 3, D("5000"), D("2"), 20, 30.0, D("0.001"), D("5"))
INTENTS = [
    Intent("a", SYM, Side.BUY, D("0.03"), D("30000"), stop_price=D("29800"), take_profit=D("30400")),   # approved
    Intent("b", SYM, Side.BUY, D("0.03"), D("30000"), OrderType.LIMIT, D("29990.00"), D("29800"), D("30400")),
    Intent("c", SYM, Side.BUY, D("0.5"), D("30000"), stop_price=D("29000"), take_profit=D("32000")),    # denied late
    Intent("d", SYM, Side.SELL, D("0.001"), D("30000"), reduce_only=True),                             # exit
]


def seed(path: Path, n: int) -> None:
    """A ledger with `n` past orders written through the store's own API (batched: a scratch file)."""
    t = [1_700_000_000.0]
    led = ReplayLedger(path, clock=lambda: t[0])
    for k in range(n):
        t[0] += 1.0
        side = Side.BUY if k % 2 == 0 else Side.SELL
        i = Intent(f"hist:{k}", SYM, side, D("0.01"), D("30000"), stop_price=D("29800") if side is Side.BUY else None,
                   take_profit=D("30400") if side is Side.BUY else None)
        led.record_decision(i, None)
        cid = led.insert_intent(i, "hk1")
        led.update_order(cid, OrderStatus.OPEN, exchange_order_id=str(k), sent=True)
        led.apply_fill(Fill(f"T{k}", cid, SYM, side, D("0.01"), D("30000"), D("0.3"), t[0]))
        led.update_order(cid, OrderStatus.FILLED)
        if k % 10_000 == 9_999:
            led.commit()
    for k in range(3):                                           # a few orders still live on the book
        cid = led.insert_intent(Intent(f"live:{k}", SYM, Side.BUY, D("0.01"), D("29000"), OrderType.LIMIT,
                                       D("29000.00"), D("28800"), D("29500")), "hk1")
        led.update_order(cid, OrderStatus.OPEN, exchange_order_id=f"L{k}", sent=True)
    led.close()


CASES = {"book unchanged": None, "first instructions after a ledger write": "write", "after 1 ms idle (control)": "idle",
         "live loop (Engine.step, 1 ms idle between iterations)": "loop"}


def measure(path: Path, orders: int, before: str | None) -> tuple[list[int], int]:
    now = [1_800_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    store = Store(path, clock)
    venue = PaperExchange(":memory:", {SYM: INST}, starting_balance=D("10000"), clock=clock)
    market = MarketData(clock)
    market.on_tick(SYM, D("30000"), now[0])
    om = OrderManager(store, venue, StateMachine(store, clock), LIM, {SYM: INST}, "hk1", market,
                      ActivityRate({"orders": 60, "rejects": 5, "cancels": 30}), clock)
    om.refresh_account()
    insts = {SYM: INST}
    for k in range(500):                                          # warm up
        pipeline.check(INTENTS[k & 3], om.snapshot("USDT"), LIM, insts)
    pc = time.perf_counter_ns
    samples = []
    live = store.live_orders()[0]["client_order_id"]
    for k in range(orders):
        if before == "write":
            store.update_order(live, OrderStatus.OPEN)                 # a ledger change since the last order
        elif before == "idle":
            time.sleep(0.001)
        t0 = pc()
        pipeline.check(INTENTS[k & 3], om.snapshot("USDT"), LIM, insts)
        samples.append(pc() - t0)
    history = len(store.intent_keys())
    store.close()
    return sorted(samples), history


class EveryBar(TrendATR):
    """The strategy's indicators (ATR for the stops), but a signal on every bar: enter when flat, else exit."""

    def __init__(self, engine: Engine, sym: str, *args):
        super().__init__(*args)
        self.engine, self.sym = engine, sym

    def on_bar(self, bar) -> Signal:
        sig = super().on_bar(bar)
        if self.n < self.warmup:
            return sig
        return Signal.EXIT_LONG if self.sym in self.engine._pos_f else Signal.ENTER_LONG


def measure_loop(path: Path, orders: int) -> tuple[list[int], int]:
    """The production loop on the seeded ledger: Engine.step() per bar, paper exchange fed bar by bar."""
    store = Store(path)
    for row in store.live_orders():                               # the seed's resting orders: not on this venue
        store.update_order(row["client_order_id"], OrderStatus.CANCELED)
    base = load(EXAMPLE)
    cfg = replace(base, risk={**base.risk, **RELAXED}, bot={**base.bot, "loop_interval_s": 0.001})
    bars = generate(orders * 3 + 200, seed=9, bar_seconds=float(cfg.exchange["bar_seconds"]), t0=time.time())
    ex = PaperExchange(":memory:", {i.symbol: i for i in cfg.instruments}, quote=cfg.bot["quote"],
                       fee_rate=cfg.exchange["fee_rate"], slippage_bps=cfg.exchange["slippage_bps"],
                       starting_balance=cfg.exchange["starting_balance"], bar_seconds=cfg.exchange["bar_seconds"],
                       manual=True)
    now = [bars[0].ts]
    store.clock = ex.clock = lambda: now[0]
    eng = Engine(cfg, store, ex, store.clock, live=True, dead_man=False)
    s = cfg.strategy
    eng.strats[SYM] = EveryBar(eng, SYM, s["fast"], s["slow"], s["atr_period"], s["band_atr"])
    eng.om.refresh_account()
    eng._on_fill()
    for bar in bars:
        if len(eng.om.pretrade_ns) >= orders:
            break
        now[0] = bar.ts + float(cfg.exchange["bar_seconds"])
        ex.feed(SYM, bar)
        eng.step()
        time.sleep(0.001)                                         # the loop's wait between iterations
    samples = sorted(eng.om.pretrade_ns)
    history = len(store.intent_keys())
    store.close()
    return samples, history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--orders", type=int, default=20_000)
    args = ap.parse_args()
    logging.disable(logging.INFO)
    sizes = [int(x) for x in args.sizes.split(",")]
    p99s: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            path = Path(d) / f"ledger-{n}.sqlite"
            seed(path, n)
            for case, before in CASES.items():
                n_orders = args.orders // (4 if before else 1)
                s, history = measure_loop(path, min(n_orders, 1000)) if before == "loop" else measure(path, n_orders, before)
                p50, p99 = s[len(s) // 2] / 1000, s[int(len(s) * 0.99)] / 1000
                p99s[n, case] = p99
                print(f"pre-trade path (snapshot + {len(pipeline.CHECKS)} checks), ledger of {history:,} orders, {case}, "
                      f"{len(s):,} orders: p50 {p50:.1f} µs  p99 {p99:.1f} µs  mean {statistics.fmean(s) / 1000:.1f} µs"
                      f"  -> target p99 <= 50 µs {'MET' if p99 <= 50 else 'NOT MET'} ({p99 / 50:.2f}x)")
            print(f"  after a write / after idle (control), p99: "
                  f"{p99s[n, 'first instructions after a ledger write'] / p99s[n, 'after 1 ms idle (control)']:.2f}x")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for case in CASES:
            print(f"  growth with history ({case}): p99 at {hi:,} / p99 at {lo:,} = {p99s[hi, case] / p99s[lo, case]:.2f}x")

if __name__ == "__main__":
    main()
