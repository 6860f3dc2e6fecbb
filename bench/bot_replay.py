"""Benchmark: backtest replay throughput in bars/s (target > 100,000 for a simple strategy).

The replay runs the production Engine, risk pipeline, breakers, ledger (in
memory) and paper exchange, bar by bar. Two figures are printed because they
differ by an order-path cost: the per-bar path (strategy, stops, breakers) and
a run where the default trend strategy trades (every order goes through the
pipeline, the ledger with its audit chain, and the paper exchange). Both are
printed as wall-clock bars/s and as bars per CPU second of the process (which the
other load of a shared machine disturbs less). Each is run twice in a row: with
the replay's batched ledger (`ReplayLedger`, one open transaction) and with one
commit per change as live; the ratio compares them.
Run: .venv/bin/python bench/bot_replay.py [--bars N] [--repeat N]
"""
import argparse
import logging
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

from hardkit_bot import backtest
from hardkit_bot.config import load
from hardkit_bot.exchange.market import generate

EXAMPLE = Path(__file__).resolve().parents[1] / "bot" / "examples" / "paper.toml"
TRADING = {"max_consecutive_losses": 1000, "max_drawdown_pct": D(99), "max_daily_loss_pct": D(99),
           "daily_loss_reduce_pct": D(98), "equity_floor": D(0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant, alternated; the best one counts")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    bars = generate(args.bars, seed=7)
    base = load(EXAMPLE)
    for name, risk in (("example limits (breakers halt trading early)", {}),
                       ("breakers relaxed: trades the whole series", TRADING)):
        cfg = replace(base, risk={**base.risk, **risk})
        runs = {True: [], False: []}
        for _ in range(args.repeat):                     # alternated, so both see the same machine load
            for batched in (True, False):
                runs[batched].append(backtest.run(cfg, bars, batched=batched))
        r, per_change = (max(runs[b], key=lambda x: x.bars_per_second) for b in (True, False))
        spread = [f"{x.bars_per_second:,.0f}" for x in runs[True]]
        cpu = max(runs[True], key=lambda x: x.bars_per_cpu_second)
        assert (r.trades, r.end_equity, r.final_state) == (per_change.trades, per_change.end_equity, per_change.final_state)
        print(f"replay, {name}: {r.bars_per_second:,.0f} bars/s over {r.bars:,} bars, best of {args.repeat} "
              f"({', '.join(spread)}) ({r.trades} fills, {r.denials} denials, final state {r.final_state})")
        print(f"  per CPU second of the replay process (no waiting for the shared CPU): "
              f"{cpu.bars_per_cpu_second:,.0f} bars/s, best of {args.repeat} "
              f"({', '.join(f'{x.bars_per_cpu_second:,.0f}' for x in runs[True])})")
        print(f"  ledger batched vs one commit per change ({per_change.bars_per_second:,.0f} bars/s): "
              f"{r.bars_per_second / per_change.bars_per_second:.2f}x; same fills, equity and state")
        print(f"  target > 100,000 bars/s -> {'MET' if r.bars_per_second > 100_000 else 'NOT MET'} "
              f"({r.bars_per_second / 100_000:.2f}x the target)")


if __name__ == "__main__":
    main()
