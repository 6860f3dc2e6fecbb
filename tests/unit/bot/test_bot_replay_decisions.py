"""Making the replay faster must not change what it decides.

The replay runs the live engine's risk decisions (engine.py's `replay_bar` reuses the loop's
breakers, pipeline and order manager). These digests of every risk decision and fill were
produced by the code before the replay's per-bar path was optimized (main at 95c1c00 with
`_decisions_digest` added, issue 9 "figures to restate"): a change that alters any order,
approval, denial code, fill or the final equity of these two fixed runs fails here."""
import logging
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import pytest

from hardkit_bot import backtest
from hardkit_bot.config import load
from hardkit_bot.exchange.market import generate

EXAMPLE = Path(__file__).resolve().parents[3] / "bot" / "examples" / "paper.toml"
RELAXED = {"max_consecutive_losses": 1000, "max_drawdown_pct": D(99), "max_daily_loss_pct": D(99),
           "daily_loss_reduce_pct": D(98), "equity_floor": D(0)}


@pytest.mark.parametrize("risk, expected", [
    ({}, (42, 0, 9903.139185467831, "HALTED", "a63b0816b1d163404bb5894b4949e8d5b2e2aa38c396aa14aa1b3854d9b9dc5a")),
    (RELAXED, (116, 0, 9686.44276083608, "ACTIVE", "5d6ec93369b660655d307d150d9cd1602e49915d68d4ab66e67ae380628a4a74")),
], ids=["example-limits", "breakers-relaxed"])
def test_a_fixed_replay_decides_exactly_as_before(risk, expected):
    base = load(EXAMPLE)
    logging.disable(logging.INFO)
    try:
        r = backtest.run(replace(base, risk={**base.risk, **risk}), generate(20000, seed=7))
    finally:
        logging.disable(logging.NOTSET)
    assert (r.trades, r.denials, r.end_equity, r.final_state, r.decisions) == expected
