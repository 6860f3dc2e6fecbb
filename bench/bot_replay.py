"""Benchmark: backtest replay throughput in bars/s (target > 100,000 for a simple strategy).

The replay runs the production Engine, risk pipeline, breakers, ledger (in
memory) and paper exchange (its market rules; its book in Python structures:
`ReplayPaperExchange`), bar by bar. Two figures are printed because they
differ by an order-path cost: the per-bar path (strategy, stops, breakers) and
a run where the default trend strategy trades (every order goes through the
pipeline, the ledger with its audit chain, and the paper exchange). Both are
printed as wall-clock bars/s and as bars per CPU second of the process (which the
other load of a shared machine disturbs less). Each is run twice in a row: with
the replay's batched ledger (`ReplayLedger`, one open transaction) and with one
commit per change as live; the ratio compares them.
After the timed runs, one trading replay runs under cProfile (`--profile-bars`, untimed) and
prints where its time goes: the share of the order path (the strategy's entries and exits,
stop-loss and target closes, syncing live orders, persisting trailing stops: each through
the pipeline, the ledger with its audit records and the paper exchange) against the per-bar
path (tick and candle checks, volatility breaker, breakers, strategy, stops), the SQL
execute calls and audit records per fill (the replay's ledger writes its queued risk decisions and
stops and a batch's records with executemany at its commit: counted apart), and the functions with
the most internal time. The timed window ends after the replay's last commit.
Shares are of CPU time under the profiler, which inflates Python calls more than SQLite's C code.
Run: .venv/bin/python bench/bot_replay.py [--bars N] [--repeat N] [--profile-bars N]
"""
import argparse
import cProfile
import logging
import pstats
import time
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

from hardkit_bot import backtest
from hardkit_bot.config import load
from hardkit_bot.exchange.market import generate

EXAMPLE = Path(__file__).resolve().parents[1] / "bot" / "examples" / "paper.toml"
TRADING = {"max_consecutive_losses": 1000, "max_drawdown_pct": D(99), "max_daily_loss_pct": D(99),
           "daily_loss_reduce_pct": D(98), "equity_floor": D(0)}
#: The trading run's control: the same bars and signals, but every entry sizes to 0 (a risk budget of
#: ~nothing), so no order is made: the per-bar path alone. Trading minus this is what the orders cost.
NO_ORDERS = {**TRADING, "risk_per_trade_pct": D("1e-12")}


def where_the_time_goes(cfg, bars) -> None:
    """One untimed trading replay under cProfile: SQL statements and audit records per fill, the top functions."""
    prof = cProfile.Profile(time.thread_time)     # CPU time: the waits for a shared CPU left out
    prof.enable()
    r = backtest.run(cfg, bars)
    prof.disable()
    stats = pstats.Stats(prof).stats    # {(file, line, name): (calls, prim calls, tottime, cumtime, {caller: (.., cumtime)})}

    run_s = sum(v[3] for k, v in stats.items() if k[0].endswith("backtest.py") and k[2] == "run")
    calls = lambda name: sum(v[0] for k, v in stats.items() if k[2] == name)  # noqa: E731
    sql = calls("<method 'execute' of 'sqlite3.Connection' objects>")
    batches = calls("<method 'executemany' of 'sqlite3.Connection' objects>")
    records = sum(v[0] for k, v in stats.items() if k[0].endswith("backtest.py") and k[2] == "audit")
    fills = max(r.trades, 1)
    print(f"  profiled (cProfile on CPU time, trading, {r.bars:,} bars, {r.trades} fills): "
          f"{sql / fills:.1f} SQL execute calls (the ledger: the paper exchange's book is in memory) and "
          f"{records / fills:.1f} audit records per fill; the records and queued rows written in {batches} "
          f"executemany calls (at the batch's commit)")
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:8]
    print("  most internal time: " + "; ".join(f"{Path(k[0]).name}:{k[2]} {100 * v[2] / run_s:.0f}%" for k, v in top))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant, alternated; the best one counts")
    ap.add_argument("--profile-bars", type=int, default=60_000, help="bars of the profiled run (0: none)")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    bars = generate(args.bars, seed=7)
    base = load(EXAMPLE)
    best_cpu = {}
    for name, risk in (("example limits (breakers halt trading early)", {}),
                       ("breakers relaxed: trades the whole series", TRADING),
                       ("control: the same signals, every entry sized to 0 (no order)", NO_ORDERS)):
        cfg = replace(base, risk={**base.risk, **risk})
        runs = {True: [], False: []}
        for _ in range(args.repeat):                     # alternated, so both see the same machine load
            for batched in (True, False):
                runs[batched].append(backtest.run(cfg, bars, batched=batched))
        r, per_change = (max(runs[b], key=lambda x: x.bars_per_second) for b in (True, False))
        spread = [f"{x.bars_per_second:,.0f}" for x in runs[True]]
        cpu = best_cpu[name] = max(runs[True], key=lambda x: x.bars_per_cpu_second)
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
    trading, control = (best_cpu[k] for k in list(best_cpu)[1:])
    per_fill = (trading.cpu_seconds - control.cpu_seconds) / max(trading.trades, 1)
    print(f"where the time goes (best CPU runs): the per-bar path {1e6 * control.cpu_seconds / control.bars:.1f} µs "
          f"per bar ({control.trades} fills in the control); the orders {1e3 * per_fill:.2f} ms of CPU per fill "
          f"({trading.trades} fills: {100 * (trading.cpu_seconds - control.cpu_seconds) / trading.cpu_seconds:.0f}% of "
          f"the trading run); at zero cost for orders the trading run would do {control.bars_per_cpu_second:,.0f} "
          f"bars per CPU second")
    if args.profile_bars:
        where_the_time_goes(replace(base, risk={**base.risk, **TRADING}), bars[:args.profile_bars])


if __name__ == "__main__":
    main()
