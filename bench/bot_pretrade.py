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

Where the time goes: the snapshot and the checks are also timed apart (thread CPU, one clock read
between them), so the cost of building the snapshot after a write shows on its own. Each order is timed twice, in wall time and in the thread's CPU time
(`time.thread_time_ns`: what this thread executed, not the waits for a shared CPU), and the
timed window counts the SQL statements run on the ledger's connection and the garbage
collections (both 0 in every case: the path reads no ledger and allocates too little to
trigger the collector). Two more controls separate "the process slept" from "the caches are
cold": 1 ms of busy spinning before each order (no sleep, no system call, no write) and
touching 4 MB of memory (no time passes to speak of). If those cost what a write costs, the
write adds no work to the path: the path itself is what it costs once its instructions and
data have left the CPU caches (the printed CPU times say the same: the thread executes that
long, it is not waiting).

Run: .venv/bin/python bench/bot_pretrade.py [--sizes 1000,10000,100000] [--orders N]
"""
import argparse
import gc
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
         "after 1 ms busy spinning, no sleep (control)": "spin", "after touching 4 MB, no sleep (control)": "touch",
         "live loop (Engine.step, 1 ms idle between iterations)": "loop"}
LOOP = "live loop (Engine.step, 1 ms idle between iterations)"
SPIN_NS = 1_000_000
TOUCH = bytearray(4 << 20)


def _spin(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def _touch(buf: bytearray) -> None:
    for k in range(0, len(buf), 64):      # one write per cache line
        buf[k] = k & 255


class Window:
    """What ran inside the timed windows: SQL statements on the ledger's connection, garbage collections."""

    def __init__(self, conn):
        self.sql = self.gc = 0
        self.split: list[tuple[int, int]] = []    # per order: (snapshot, checks) thread CPU ns
        self.open = False
        conn.set_trace_callback(self._statement)
        gc.callbacks.append(self._collect)

    def _statement(self, _sql: str) -> None:
        self.sql += self.open

    def _collect(self, phase: str, _info) -> None:
        self.gc += self.open and phase == "start"

    def close(self) -> None:
        gc.callbacks.remove(self._collect)


def measure(path: Path, orders: int, before: str | None) -> tuple[list[int], list[int], Window, int]:
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
    pc, tt = time.perf_counter_ns, time.thread_time_ns
    samples, cpu = [], []
    live = store.live_orders()[0]["client_order_id"]
    window = Window(store.conn)
    for k in range(orders):
        if before == "write":
            store.update_order(live, OrderStatus.OPEN)                 # a ledger change since the last order
        elif before == "idle":
            time.sleep(0.001)
        elif before == "spin":
            _spin(SPIN_NS)
        elif before == "touch":
            _touch(TOUCH)
        window.open = True
        c0 = tt()
        t0 = pc()
        snap = om.snapshot("USDT")
        c1 = tt()
        pipeline.check(INTENTS[k & 3], snap, LIM, insts)
        t1 = pc()
        c2 = tt()
        cpu.append(c2 - c0)
        window.split.append((c1 - c0, c2 - c1))
        window.open = False
        samples.append(t1 - t0)
    window.close()
    history = len(store.intent_keys())
    store.close()
    return sorted(samples), sorted(cpu), window, history


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


def measure_loop(path: Path, orders: int) -> tuple[list[int], list[int], None, int]:
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
    return samples, [], None, history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--orders", type=int, default=20_000)
    args = ap.parse_args()
    logging.disable(logging.INFO)
    sizes = [int(x) for x in args.sizes.split(",")]
    p99s: dict[tuple[int, str], float] = {}
    cpu99: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            path = Path(d) / f"ledger-{n}.sqlite"
            seed(path, n)
            for case, before in CASES.items():
                n_orders = args.orders // (4 if before else 1)
                s, cpu, window, history = (measure_loop(path, min(n_orders, 1000)) if before == "loop"
                                           else measure(path, n_orders, before))
                p50, p99 = _q(s, 0.5), _q(s, 0.99)
                p99s[n, case] = p99
                cpu99[n, case] = _q(cpu, 0.99) if cpu else p99    # the loop's samples are wall time only
                print(f"pre-trade path (snapshot + {len(pipeline.CHECKS)} checks), ledger of {history:,} orders, {case}, "
                      f"{len(s):,} orders: p50 {p50:.1f} µs  p99 {p99:.1f} µs  mean {statistics.fmean(s) / 1000:.1f} µs"
                      f"  -> target p99 <= 50 µs {'MET' if p99 <= 50 else 'NOT MET'} ({p99 / 50:.2f}x)")
                if window is not None:
                    c99 = cpu99[n, case]
                    print(f"    thread CPU time p50 {_q(cpu, 0.5):.1f} µs  p99 {c99:.1f} µs "
                          f"({'MET' if c99 <= 50 else 'NOT MET'} in CPU time); in the timed windows: "
                          f"{window.sql} SQL statements, {window.gc} garbage collections")
                    snap, checks = (sorted(x[j] for x in window.split) for j in (0, 1))
                    print(f"    of which the snapshot (OrderManager.snapshot) p50 {_q(snap, 0.5):.1f} µs p99 "
                          f"{_q(snap, 0.99):.1f} µs, the {len(pipeline.CHECKS)} checks p50 {_q(checks, 0.5):.1f} µs "
                          f"p99 {_q(checks, 0.99):.1f} µs (thread CPU; one more clock read between them)")
            ref = cpu99[n, "book unchanged"]
            print("  CPU-time p99 against the book unchanged: " + ", ".join(
                f"{c.split(' (')[0].split(',')[0]} {cpu99[n, c] / ref:.1f}x" for c in CASES if c not in ("book unchanged", LOOP)))
            w = cpu99[n, "first instructions after a ledger write"]
            print(f"  CPU-time p99 after a write / after 1 ms idle: {w / cpu99[n, 'after 1 ms idle (control)']:.2f}x, "
                  f"/ after 1 ms busy: {w / cpu99[n, 'after 1 ms busy spinning, no sleep (control)']:.2f}x, "
                  f"/ after touching 4 MB: {w / cpu99[n, 'after touching 4 MB, no sleep (control)']:.2f}x")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for case in CASES:
            print(f"  growth with history ({case}): p99 at {hi:,} / p99 at {lo:,} = {p99s[hi, case] / p99s[lo, case]:.2f}x"
                  + (f" (CPU time: {cpu99[hi, case] / cpu99[lo, case]:.2f}x)" if case != LOOP else ""))


def _q(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000


if __name__ == "__main__":
    main()
