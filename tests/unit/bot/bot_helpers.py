"""Helpers shared by the bot tests: configs, an injectable clock, the bot as a subprocess.

A uniquely named module (not conftest) so `from bot_helpers import ...` can never pick up
another directory's conftest."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The bot is its own package (bot/pyproject.toml). Tests run against the source tree even when
# it was not pip-installed into the environment running pytest (and so do the subprocesses).
BOT_SRC = str(Path(__file__).resolve().parents[3] / "bot" / "src")
try:
    import hardkit_bot  # noqa: F401
except ImportError:
    sys.path.insert(0, BOT_SRC)

from decimal import Decimal as D  # noqa: E402

from hardkit_bot.config import parse  # noqa: E402
from hardkit_bot.engine import Engine  # noqa: E402
from hardkit_bot.exchange.paper import PaperExchange  # noqa: E402
from hardkit_bot.model import Bar, Intent, OrderType, Side  # noqa: E402
from hardkit_bot.store import Store  # noqa: E402

BASE = """
[bot]
instance_id = "hk1"
timezone = "{tz}"
loop_interval_s = {loop}
[exchange]
kind = "paper"
bar_seconds = {bar}
unknown_grace_s = {grace}
starting_balance = "10000"
[strategy]
fast = 3
slow = 8
atr_period = 5
[risk]
stale_data_s = 5
max_consecutive_losses = {streak}
max_orders_per_minute = 50
breaker_orders_per_minute = 200
breaker_cancels_per_minute = 200
{extra_risk}
[[instruments]]
symbol = "BTC/USDT"
tick_size = "0.01"
step_size = "0.00001"
min_qty = "0.0001"
min_notional = "10"
"""


def config_text(tz="UTC", loop=0.05, bar=0.02, grace=0.5, streak=1000, extra_risk="") -> str:
    return BASE.format(tz=tz, loop=loop, bar=bar, grace=grace, streak=streak, extra_risk=extra_risk)


class Clock:
    """A manual clock: tests move time instead of sleeping."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class Replay:
    """The production engine fed bar by bar (60 s bars) on a manual paper exchange; the clock is the bar clock.

    The strategy never signals (band_atr = 20): tests place orders themselves. The paper
    exchange charges no fee and no slippage unless `fee_rate`/`slippage_bps` say otherwise."""

    STEP = 60.0

    def __init__(self, tmp, clock, extra_risk="", fee_rate="0", slippage_bps="0", streak=1000):
        self.tmp, self.clock = tmp, clock
        text = config_text(extra_risk=extra_risk, streak=streak).replace("[strategy]", "[strategy]\nband_atr = 20")
        text = text.replace("[exchange]", f'[exchange]\nfee_rate = "{fee_rate}"\nslippage_bps = "{slippage_bps}"')
        self.cfg = parse(text)
        self.store = Store(tmp / "ledger.sqlite", clock)
        self.ex = PaperExchange(":memory:", {i.symbol: i for i in self.cfg.instruments}, bar_seconds=self.STEP,
                                clock=clock, manual=True, slippage_bps=D(slippage_bps), fee_rate=D(fee_rate))
        self.eng = Engine(self.cfg, self.store, self.ex, clock, live=False, resting_stops=False,
                          dead_man=False)   # as backtests run
        self.eng.om.refresh_account()
        self.eng._on_fill()
        self.t = clock()
        self.price = 100.0

    def bar(self, close=None, rng=0.2):
        close = self.price if close is None else close
        b = Bar(self.t, self.price, max(self.price, close) + rng / 2, min(self.price, close) - rng / 2, close)
        self.t += self.STEP
        self.clock.t = self.t
        self.eng.replay_bar("BTC/USDT", b, self.STEP)
        self.price = close

    def buy(self, qty="9", stop="95", tp="120"):
        px = self.eng.market.last["BTC/USDT"][0]
        return self.eng.om.submit(Intent(f"b{self.t}", "BTC/USDT", Side.BUY, D(qty), px, stop_price=D(stop),
                                         take_profit=D(tp)), "USDT")

    @property
    def qty(self):
        p = self.store.positions().get("BTC/USDT")
        return p.qty if p else D(0)


BOT = [sys.executable, "-m", "hardkit_bot"]


class BotProcess:
    """The bot as a real subprocess (so SIGKILL is real). Always reaped by the fixture."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.state = tmp / "state"
        self.inhibit = tmp / "inhibit"
        self.config = tmp / "bot.toml"
        self.procs: list[subprocess.Popen] = []

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def start(self, *extra: str, env: dict | None = None, max_steps: int = 0) -> subprocess.Popen:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("HARDKIT_BOT_", "CREDENTIALS_DIRECTORY",
                                                                       "STATE_DIRECTORY", "RUNTIME_DIRECTORY"))}
        e.update(env or {})
        e["PYTHONPATH"] = os.pathsep.join(filter(None, [BOT_SRC, e.get("PYTHONPATH")]))
        e["HARDKIT_REBOOT_INHIBIT_DIR"] = str(self.inhibit)
        args = [*BOT, "run", "--config", str(self.config), "--state-dir", str(self.state), *extra]
        if max_steps:
            args += ["--max-steps", str(max_steps)]
        log = open(self.tmp / f"bot-{len(self.procs)}.log", "wb")
        p = subprocess.Popen(args, env=e, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def cli(self, *args: str, env: dict | None = None, timeout: float = 60, state: bool = True) -> subprocess.CompletedProcess:
        e = {k: v for k, v in os.environ.items() if not k.startswith("HARDKIT_BOT_")}
        e.update(env or {})
        e["PYTHONPATH"] = os.pathsep.join(filter(None, [BOT_SRC, e.get("PYTHONPATH")]))
        extra = ["--state-dir", str(self.state)] if state else []
        return subprocess.run([*BOT, *args, *extra], env=e, capture_output=True, text=True, timeout=timeout)

    def logs(self) -> str:
        return "\n".join((self.tmp / f"bot-{i}.log").read_text(errors="replace") for i in range(len(self.procs)))

    def wait_for(self, pred, timeout: float = 20.0, what: str = "condition"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n--- logs ---\n{self.logs()[-4000:]}")

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)


class Rig:
    """The engine in-process on a manual clock, against a paper exchange in its own file (survives restarts)."""

    def __init__(self, tmp, clock, grace=5.0):
        self.tmp, self.clock = tmp, clock
        self.cfg = parse(config_text(bar=1.0, grace=grace))
        self.ex_path = tmp / "paper.sqlite"
        self.n = 0
        self.boot()

    def exchange(self):
        x = self.cfg.exchange
        return PaperExchange(self.ex_path, {i.symbol: i for i in self.cfg.instruments}, fee_rate=x["fee_rate"],
                             slippage_bps=x["slippage_bps"], starting_balance=x["starting_balance"], bar_seconds=1.0,
                             clock=self.clock)

    def boot(self):
        self.store = Store(self.tmp / "ledger.sqlite", self.clock)
        self.ex = self.exchange()
        self.clock.advance(3)
        self.eng = Engine(self.cfg, self.store, self.ex, self.clock, live=False)
        self.report = self.eng.start()
        self.eng.step()

    def restart(self):
        self.store.close()
        self.ex.close()
        self.boot()

    def buy(self, qty="0.01"):
        self.n += 1
        px = self.eng.market.last["BTC/USDT"][0]
        i = Intent(f"test:{self.n}", "BTC/USDT", Side.BUY, D(qty), px, stop_price=(px * D("0.99")).quantize(D("0.01")),
                   take_profit=(px * D("1.03")).quantize(D("0.01")))
        return self.eng.om.submit(i, "USDT")

    def exchange_orders(self, cid=None, stops=True):
        """The exchange's orders (one client id's); stops=False leaves out resting stop-losses."""
        return [o for o in self.ex.all_orders() if (cid is None or o.client_order_id == cid)
                and (stops or o.order_type is not OrderType.STOP)]

    def assert_books_agree(self):
        """Ledger fills == exchange trades, and the position == the exchange's BTC balance."""
        ledger = self.store.fill_ids()
        trades = {f.trade_id for o in self.ex.all_orders() for f in self.ex.order_trades(o.instrument, o.client_order_id)}
        assert ledger == trades
        pos = self.store.positions().get("BTC/USDT")
        assert (pos.qty if pos else D(0)) == self.ex.balances().total("BTC")
