"""Config: valid files load; a malformed one lists every problem at once and nothing trades."""
from decimal import Decimal

import pytest

from hardkit_bot.config import FIELDS, ConfigError, parse

from bot_helpers import config_text

BAD = """
[bot]
instance_id = "HK_1!"          # bad pattern
timezone = "Mars/Olympus"       # unknown zone
loop_interval_s = -1            # below min
[exchange]
kind = "kraken-direct"          # not a choice
fee_rate = "abc"                # not a number
[strategy]
fast = 50
slow = 20                       # fast must be < slow
[risk]
max_daily_loss_pct = 2
daily_loss_reduce_pct = 3       # reduce must be < max
max_drawdwn_pct = 5             # typo: unknown key
vol_z_enter = 2
vol_z_exit = 3                  # hysteresis inverted
max_order_notional = nan
[[instruments]]
symbol = "BTCUSDT"              # not BASE/QUOTE
tick_size = "0"
"""


def test_valid_config_loads_with_documented_defaults():
    c = parse(config_text())
    assert c.instruments[0].symbol == "BTC/USDT"
    assert c.instruments[0].step_size == Decimal("0.00001")
    assert c.risk["max_drawdown_pct"] == Decimal("10")
    for section in FIELDS.values():
        for name, f in section.items():
            assert f.doc, f"{name} has no documentation"


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as e:
        parse(BAD)
    text = "\n".join(e.value.problems)
    for needle in ("bot.instance_id", "bot.timezone", "bot.loop_interval_s", "exchange.kind", "exchange.fee_rate",
                   "strategy.fast", "daily_loss_reduce_pct", "risk.max_drawdwn_pct: unknown key", "vol_z_exit",
                   "max_order_notional", "instruments[0].symbol", "instruments[0].step_size: required",
                   "instruments[0].tick_size"):
        assert needle in text, f"missing {needle!r} in:\n{text}"
    assert len(e.value.problems) >= 13


def test_not_toml_is_a_clear_error():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[bot\ninstance_id=")


def test_ccxt_needs_an_exchange_id_and_target_must_clear_reward_risk():
    with pytest.raises(ConfigError) as e:
        parse(config_text().replace('kind = "paper"', 'kind = "ccxt"').replace("[strategy]", "[strategy]\ntarget_atr = 1.0"))
    text = "\n".join(e.value.problems)
    assert "exchange.id: required" in text and "min_reward_risk" in text


def test_cli_exits_nonzero_lists_problems_and_trades_nothing(bot):
    bot.write_config(BAD)
    p = bot.start()
    assert p.wait(30) == 2
    out = bot.logs()
    assert "problem(s); nothing was traded" in out and "bot.timezone" in out and "strategy.fast" in out
    assert not (bot.state / "ledger.sqlite").exists()
    assert not (bot.state / "paper-exchange.sqlite").exists()


@pytest.mark.parametrize("name", ["paper.toml", "binance-testnet.toml"])
def test_shipped_examples_are_valid(name):
    from pathlib import Path
    from hardkit_bot.config import load
    cfg = load(Path(__file__).resolve().parents[3] / "bot" / "examples" / name)
    assert cfg.instruments
