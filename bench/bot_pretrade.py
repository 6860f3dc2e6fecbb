"""Benchmark: pre-trade risk check latency per order (target p99 < 50 µs).

Times `pipeline.check()` one call at a time over a mix of approved entries,
denied entries and reduce-only exits, and prints p50/p99 next to the target.
Run: .venv/bin/python bench/bot_pretrade.py
"""
import statistics
import time
from decimal import Decimal as D

from hardkit_bot.model import Instrument, Intent, OrderType, Side, TradingState
from hardkit_bot.risk.pipeline import CHECKS, RiskLimits, RiskSnapshot, check

N = 100_000
INST = Instrument("BTC/USDT", "BTC", "USDT", D("0.01"), D("0.00001"), D("0.0001"), D("1000"), D("10"))
LIM = RiskLimits(D("0.5"), D("1.5"), D("2000"), 3, D("5000"), D("2"), 20, 30.0, D("0.001"))
SNAP = RiskSnapshot(state=TradingState.ACTIVE, now=1000.0, equity=D("10000"), free_quote=D("9000"),
                    pending_buy_cost=D("100"), positions={"BTC/USDT": D("0.01")}, pending_sell_qty={},
                    open_instruments=frozenset({"BTC/USDT"}), exposure=D("300"),
                    last_price={"BTC/USDT": (D("30000"), 999.0)}, orders_last_minute=3,
                    known_keys=frozenset(f"k{i}" for i in range(1000)))
INTENTS = [
    Intent("a", "BTC/USDT", Side.BUY, D("0.03"), D("30000"), stop_price=D("29800"), take_profit=D("30400")),   # approved
    Intent("b", "BTC/USDT", Side.BUY, D("0.03"), D("30000"), OrderType.LIMIT, D("29990.00"), D("29800"), D("30400")),
    Intent("c", "BTC/USDT", Side.BUY, D("0.5"), D("30000"), stop_price=D("29000"), take_profit=D("32000")),    # denied late
    Intent("d", "BTC/USDT", Side.SELL, D("0.01"), D("30000"), reduce_only=True),                              # exit
]


def main() -> None:
    insts = {"BTC/USDT": INST}
    for i in INTENTS * 1000:  # warm up
        check(i, SNAP, LIM, insts)
    samples = []
    pc = time.perf_counter_ns
    for k in range(N):
        i = INTENTS[k & 3]
        t0 = pc()
        check(i, SNAP, LIM, insts)
        samples.append(pc() - t0)
    samples.sort()
    p50, p99 = samples[N // 2] / 1000, samples[int(N * 0.99)] / 1000
    print(f"pre-trade check ({len(CHECKS)} checks, {N} orders): p50 {p50:.1f} µs  p99 {p99:.1f} µs  "
          f"mean {statistics.fmean(samples) / 1000:.1f} µs")
    print(f"  target p99 < 50 µs -> {'MET' if p99 < 50 else 'NOT MET'} (p99 is {p99 / 50:.2f}x the target)")


if __name__ == "__main__":
    main()
