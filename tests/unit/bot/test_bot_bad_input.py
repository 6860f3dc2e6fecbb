"""Bad input: NaN/negative/stale prices, out-of-order candles, garbage from the exchange.

Each must end in a clear error, a rejected datum, or a halt — never a crash that loses state.
"""
from decimal import Decimal as D

import pytest

from hardkit_bot.config import parse
from hardkit_bot.engine import Engine
from hardkit_bot.exchange.base import BadExchangeData
from hardkit_bot.exchange.market import load_csv
from hardkit_bot.exchange.paper import PaperExchange
from hardkit_bot.model import Bar, TradingState
from hardkit_bot.store import Store

from bot_helpers import config_text


class Scripted:
    """Delegates to a real paper exchange, but market data comes from the test."""

    def __init__(self, inner):
        self.inner = inner
        self.tick = None
        self.bars = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def ticker(self, symbol):
        if isinstance(self.tick, Exception):
            raise self.tick
        return self.tick

    def candles(self, symbol, since):
        return self.bars


@pytest.fixture
def rig(tmp_path, clock):
    cfg = parse(config_text(bar=1.0))
    store = Store(tmp_path / "ledger.sqlite", clock)
    inner = PaperExchange(tmp_path / "paper.sqlite", {i.symbol: i for i in cfg.instruments}, bar_seconds=1.0, clock=clock)
    ex = Scripted(inner)
    eng = Engine(cfg, store, ex, clock, live=False)
    ex.tick = (D("30000"), clock())
    eng.start()
    return eng, ex, clock, store


@pytest.mark.parametrize("bad", [(D("NaN"), 0), (D("-5"), 0), (D("0"), 0), ("garbage", 0), (D("Infinity"), 0)])
def test_bad_prices_are_rejected_and_stale_data_reduces(rig, bad):
    eng, ex, clock, store = rig
    ex.tick = (bad[0], clock())
    for _ in range(3):
        eng.step()
        clock.advance(2)
    assert "BTC/USDT" not in eng.market.last
    assert eng.market.rejected >= 3
    assert eng.sm.effective is TradingState.ACTIVE          # not stale yet (5 s)
    clock.advance(5)
    eng.step()
    v = eng.sm.view()
    assert v.state is TradingState.REDUCING and "stale or missing market data" in v.reason
    assert v.latched is TradingState.ACTIVE                 # transient: good data clears it
    ex.tick = (D("30000"), clock())
    eng.step()
    assert eng.sm.effective is TradingState.ACTIVE


def test_stale_timestamps_and_out_of_order_candles(rig):
    eng, ex, clock, store = rig
    t = clock()
    ex.tick = (D("30000"), t)
    ex.bars = [Bar(t - 120, 30000, 30020, 29990, 30015), Bar(t - 60, 30015, 30020, 30010, 30018)]
    eng.step()
    fed = eng.strats["BTC/USDT"].n
    assert fed == 2
    ex.bars = [Bar(t - 90, 30000, 30020, 29990, 30015), Bar(t - 60, 30000, 30020, 29990, 30015)]   # older / same: rejected
    ex.tick = (D("30001"), t - 100)                                              # a tick older than the last one
    eng.step()
    assert eng.strats["BTC/USDT"].n == fed
    assert eng.market.last["BTC/USDT"][0] == D("30000")
    ex.bars = [Bar(t, 30000, 29990, 30020, 30015)]                               # high below low: inconsistent
    eng.step()
    assert eng.strats["BTC/USDT"].n == fed


def test_exchange_errors_never_crash_the_loop(rig):
    eng, ex, clock, store = rig
    ex.tick = BadExchangeData("ticker: NaN")
    eng.step()
    ex.tick = ConnectionResetError("boom")          # not even an ExchangeError: a bug-shaped failure
    eng.step_safely()
    v = eng.sm.view()
    assert v.state is TradingState.HALTED and "internal error" in v.reason and "ConnectionResetError" in v.reason
    store.close()
    s2 = Store(store.path)
    assert s2.get_state()[0] is TradingState.HALTED   # the halt is in the ledger


def test_paper_garbage_fault_is_bad_data_not_a_crash(tmp_path, clock):
    cfg = parse(config_text(bar=1.0))
    ex = PaperExchange(tmp_path / "p.sqlite", {i.symbol: i for i in cfg.instruments}, bar_seconds=1.0, clock=clock)
    clock.advance(3)
    ex.inject("garbage")
    with pytest.raises(BadExchangeData):
        ex.ticker("BTC/USDT")
    assert ex.ticker("BTC/USDT")[0] > 0


@pytest.mark.parametrize("body,msg", [
    ("ts,open,high,low,close\n1,1,2,0.5,1.5\n1,1,2,0.5,1.5\n", "not after the previous"),
    ("1,1,2,0.5,nan\n", "non-finite"),
    ("1,1,2,0.5,-1\n", "inconsistent"),
    ("1,abc,2,0.5,1\n", "could not convert"),
    ("", "no candles"),
    (b"ts,open,high,low,close\n1,1,2,0.5,1.5\n\xff\xfe,1,1,1,1\n", "not UTF-8"),
])
def test_bad_price_series_files_give_a_clear_error(tmp_path, body, msg, bot):
    p = tmp_path / "s.csv"
    p.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(BadExchangeData, match=msg):
        load_csv(p)
    bot.write_config(config_text())
    r = bot.cli("backtest", "--config", str(bot.config), "--csv", str(p), state=False)
    assert r.returncode == 2 and "cannot read price series" in r.stderr


def test_a_frozen_feed_goes_stale_even_if_it_keeps_answering(rig):
    eng, ex, clock, store = rig
    frozen = clock()
    ex.tick = (D("30000"), frozen)                    # same price, same exchange timestamp, forever
    eng.step()
    clock.advance(5)
    eng.step()
    assert eng.sm.effective is TradingState.ACTIVE   # exactly stale_data_s old: not yet
    clock.advance(0.5)
    eng.step()
    v = eng.sm.view()
    assert v.state is TradingState.REDUCING and "stale" in v.reason


def one_line_exit_2(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("hardkit-bot: "), r.stderr


def test_a_non_utf8_config_is_a_clear_error_for_run_and_check_config(bot):
    bot.config.write_bytes(config_text().encode().replace(b'"hk1"', b'"hk\xff1"'))
    for cmd in ("run", "check-config"):
        r = bot.cli(cmd, "--config", str(bot.config), state=cmd == "run")
        one_line_exit_2(r)
        assert "not UTF-8" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (bot.state / "ledger.sqlite").exists()             # nothing was started


@pytest.mark.parametrize("cmd", [("run", "--config", "{config}", "--max-steps", "2"), ("status",), ("status", "--json"),
                                 ("halt",), ("audit", "verify")])
def test_a_ledger_that_is_not_a_database_is_a_clear_error(bot, cmd):
    bot.write_config(config_text())
    bot.state.mkdir(parents=True)
    (bot.state / "ledger.sqlite").write_bytes(b"this is not an SQLite file, just text\n" * 100)
    r = bot.cli(*[a.format(config=bot.config) for a in cmd])
    one_line_exit_2(r)
    assert "not a usable SQLite ledger" in r.stderr
    assert not (bot.state / "paper-exchange.sqlite").exists()    # no exchange was touched


@pytest.mark.parametrize("cmd", [("run", "--config", "{config}", "--max-steps", "2"), ("status",), ("halt",)])
def test_an_sqlite_file_that_is_not_a_ledger_is_a_clear_error_and_left_as_it_was(bot, cmd):
    """Another program's SQLite database at the ledger's path (e.g. the paper exchange's book copied
    over it) is no ledger: `run` must not add the ledger's tables to it and trip over its own."""
    bot.write_config(config_text())
    bot.state.mkdir(parents=True)
    ledger = bot.state / "ledger.sqlite"
    cfg = parse(config_text())
    PaperExchange(ledger, {i.symbol: i for i in cfg.instruments}).close()
    before = ledger.read_bytes()
    r = bot.cli(*[a.format(config=bot.config) for a in cmd])
    one_line_exit_2(r)
    assert "not a hardkit-bot ledger" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ledger.read_bytes() == before and not (bot.state / "paper-exchange.sqlite").exists()


def test_check_config_reads_the_files_the_config_points_to(bot, tmp_path):
    csv = tmp_path / "prices.csv"
    csv.write_text("ts,open,high,low,close\n1,1,2,0.5,1.5\n2,abc,2,0.5,1\n")
    bot.write_config(config_text().replace('kind = "paper"', f'kind = "paper"\nseries = "{csv}"'))
    r = bot.cli("check-config", "--config", str(bot.config), state=False)
    assert r.returncode == 2 and "exchange.series" in r.stderr and "could not convert" in r.stderr, r.stderr
    csv.write_text("ts,open,high,low,close\n1,1,2,0.5,1.5\n2,1.5,2,1,1.8\n")
    r = bot.cli("check-config", "--config", str(bot.config), state=False)
    assert r.returncode == 0, r.stderr


def test_a_state_dir_that_is_a_file_is_a_clear_error(bot):
    """`--state-dir` naming a regular file was a FileExistsError traceback from `run`."""
    bot.write_config(config_text())
    bot.state.parent.mkdir(parents=True, exist_ok=True)
    bot.state.write_text("not a folder\n")
    r = bot.cli("run", "--config", str(bot.config), "--max-steps", "2")
    one_line_exit_2(r)
    assert f"state directory {bot.state} is not usable" in r.stderr, r.stderr
    assert bot.state.read_text() == "not a folder\n"
