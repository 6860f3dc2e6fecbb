"""Bot configuration: a TOML file validated as a whole before anything trades.

Two passes, like a compiler: the *schema* pass checks every key's type and
bounds (and flags unknown keys, which are usually typos of a risk limit), the
*consistency* pass checks relations between values (a "reduce" threshold must be
below its "halt" threshold, ...). Every problem is collected and reported at
once; `load()` raises `ConfigError` carrying the full list and the CLI exits
non-zero without touching an exchange.

Every default is documented in FIELDS, where it is defined. Amounts are
strings or numbers in the TOML and become `Decimal`.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .model import Instrument


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Field:
    kind: str            # "str" | "int" | "float" | "dec" | "bool"
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    pattern: str | None = None


_REQUIRED = object()

#: section -> key -> Field. `_REQUIRED` marks keys without a default.
FIELDS: dict[str, dict[str, Field]] = {
    "bot": {
        "instance_id": Field("str", "hk1", "Prefix of every client order id; tells our orders from foreign ones. 1-6 chars [a-z0-9].", pattern=r"^[a-z0-9]{1,6}$"),
        "timezone": Field("str", "UTC", "IANA zone whose local midnight anchors the daily loss limit."),
        "loop_interval_s": Field("float", 1.0, "Seconds between engine iterations (market data poll, order sync).", min=0.01, max=60),
        "quote": Field("str", "USDT", "Quote (cash) currency of the account; equity is measured in it.", pattern=r"^[A-Z0-9]{2,10}$"),
        "equity_snapshot_s": Field("float", 60.0, "Minimum seconds between persisted equity snapshots.", min=0, max=3600),
    },
    "exchange": {
        "kind": Field("str", "paper", "paper (built-in simulator, default) or ccxt (a real exchange).", choices=("paper", "ccxt")),
        "id": Field("str", "", "ccxt exchange id (e.g. binance); required when kind = ccxt."),
        "sandbox": Field("bool", True, "Use the exchange's sandbox/testnet when it has one (ccxt). Default on: real money is opt-in."),
        "timeout_ms": Field("int", 10000, "Per-request timeout; a create that times out becomes UNKNOWN and is resolved by client id.", min=100, max=120000),
        "api_url": Field("str", "", "ccxt: replace scheme://host[:port] of every API URL (a local test endpoint or a mirror). Empty: the exchange's own."),
        "ca_bundle": Field("str", "", "ccxt: PEM file of CAs to verify the exchange's TLS certificate against. Verification is always on; empty uses the certifi bundle."),
        "timeframe": Field("str", "1m", "ccxt: candle timeframe the strategy runs on (ccxt notation: 1m, 5m, 1h, ...).", pattern=r"^[0-9]{1,3}[smhdw]$"),
        "protective_stop": Field("bool", True, "Rest a stop-loss order on the exchange for every position and move it as the trailing stop tightens, so a position stays protected while the bot is down. Where the venue has no stop-loss orders (ccxt), a warning is logged and only the bot enforces stops."),
        "stop_move_min_s": Field("float", 30.0, "Minimum seconds between moves of a resting exchange stop (each is a cancel and a new order; the bot's own stop still trails every bar).", min=0, max=86400),
        "dead_man_switch": Field("bool", True, "Arm the venue's dead-man's switch (ccxt cancelAllOrdersAfter) while an entry order rests and no protective stop is live, so a dead bot's entry is cancelled on the venue; never armed while a stop protects a position (the switch would cancel the stop too). Entries a dead bot left resting longer than dead_man_timeout_s are also cancelled at the next start. A venue without a switch: a warning, and only the start-up cancel."),
        "dead_man_timeout_s": Field("float", 60.0, "Seconds without a refresh (one per engine iteration) after which the venue's dead-man's switch cancels every open order; at least 5 loop intervals, so a slow iteration never fires it.", min=1, max=86400),
        "unknown_grace_s": Field("float", 30.0, "How long an UNKNOWN order not found on the exchange is waited for before it is declared ABANDONED.", min=0, max=3600),
        "starting_balance": Field("dec", Decimal("10000"), "Paper: quote balance of a fresh paper account.", min=0),
        "fee_rate": Field("dec", Decimal("0.001"), "Paper: taker fee as a fraction of notional (0.001 = 0.1%).", min=0, max=0.05),
        "slippage_bps": Field("dec", Decimal("5"), "Adverse slippage of market orders in basis points: the risk guard reserves it for every market buy; the paper exchange fills at it.", min=0, max=500),
        "bar_seconds": Field("float", 1.0, "Paper: wall-clock seconds per generated bar (accelerated market).", min=0.001, max=86400),
        "series": Field("str", "generated", "Paper: 'generated' (seeded random walk with trends) or a CSV path ts,open,high,low,close[,volume]."),
        "seed": Field("int", 42, "Paper: seed of the generated price series.", min=0),
        "start_price": Field("float", 30000.0, "Paper: first price of the generated series.", min=1e-9),
    },
    "strategy": {
        "kind": Field("str", "trend_atr", "Strategy: trend_atr (EMA crossover entries, ATR stop and target).", choices=("trend_atr",)),
        "fast": Field("int", 20, "Fast EMA period (bars).", min=2, max=10000),
        "slow": Field("int", 50, "Slow EMA period (bars); must exceed fast.", min=3, max=10000),
        "band_atr": Field("float", 0.5, "Hysteresis: enter when fast EMA - slow EMA > band_atr * ATR, exit below -band_atr * ATR.", min=0, max=20),
        "atr_period": Field("int", 14, "ATR period (bars).", min=2, max=10000),
        "stop_atr": Field("float", 2.0, "Initial and trailing stop distance in ATRs.", min=0.1, max=50),
        "target_atr": Field("float", 4.0, "Take-profit distance in ATRs (sets the reward side of reward:risk).", min=0.1, max=100),
    },
    "risk": {
        "risk_per_trade_pct": Field("dec", Decimal("0.5"), "Max loss at the stop per entry, % of equity; sizes entries (adaptive sizing).", min=0.01, max=10),
        "min_reward_risk": Field("dec", Decimal("1.5"), "Minimum (target - entry) / (entry - stop) for an entry.", min=0, max=100),
        "max_order_notional": Field("dec", Decimal("2000"), "Max notional of one order, quote currency.", min=0),
        "max_open_positions": Field("int", 3, "Max instruments with an open position at once.", min=1, max=1000),
        "max_total_exposure": Field("dec", Decimal("5000"), "Max sum of position notionals plus pending buys, quote currency.", min=0),
        "price_band_pct": Field("dec", Decimal("2"), "A limit price may deviate at most this % from the last price.", min=0.01, max=50),
        "max_orders_per_minute": Field("int", 20, "Throttle: new non-protective orders per rolling minute.", min=1, max=10000),
        "daily_loss_reduce_pct": Field("dec", Decimal("2"), "Daily loss (equity incl. unrealized vs local midnight) that moves to REDUCING, %.", min=0.01, max=100),
        "max_daily_loss_pct": Field("dec", Decimal("3"), "Daily loss that latches HALTED, %.", min=0.01, max=100),
        "max_drawdown_pct": Field("dec", Decimal("10"), "Peak-to-trough equity drawdown that latches HALTED, %.", min=0.01, max=100),
        "max_consecutive_losses": Field("int", 4, "Consecutive losing round trips (a win resets) that latch HALTED.", min=1, max=1000),
        "equity_floor": Field("dec", Decimal("0"), "Equity below this latches KILLED (flatten, manual reset). 0 disables.", min=0),
        "stale_data_s": Field("float", 30.0, "No valid market data for this long: REDUCING until fresh data returns.", min=0.1, max=86400),
        "breaker_orders_per_minute": Field("int", 60, "Abnormal activity: orders sent per minute that latch HALTED.", min=1, max=100000),
        "breaker_rejects_per_minute": Field("int", 5, "Abnormal activity: exchange rejects per minute that latch HALTED.", min=1, max=100000),
        "breaker_cancels_per_minute": Field("int", 30, "Abnormal activity: cancels per minute that latch HALTED.", min=1, max=100000),
        "vol_window": Field("int", 100, "Bars of bar-range history for the volatility z-score.", min=10, max=100000),
        "vol_z_enter": Field("float", 6.0, "Range z-score that enters the volatility breaker (REDUCING + auto-close).", min=0.5, max=100),
        "vol_z_exit": Field("float", 2.0, "Range z-score below which the breaker may clear (hysteresis).", min=0, max=100),
        "vol_clear_bars": Field("int", 10, "Consecutive calm bars (z below exit) before the volatility breaker clears.", min=1, max=100000),
        "vol_gap_pct": Field("float", 5.0, "A one-bar move of the close (or a gap to the open) of at least this % from the previous close enters the volatility breaker (REDUCING + auto-close).", min=0.01, max=100),
        "price_sanity_ratio": Field("float", 2.0, "Sanity band: a price more than this factor above or below the last accepted one is rejected as absurd (the feed goes stale: REDUCING).", min=1.01, max=1000),
        "max_data_ahead_s": Field("float", 5.0, "A tick or candle stamped more than this many seconds ahead of the local clock is rejected (clock-skew tolerance).", min=0, max=3600),
        "loss_overrun_pct": Field("float", 50.0, "A position whose loss exceeds its planned risk (entry to planned stop, incl. fees) by this % is closed and REDUCING is latched.", min=0, max=10000),
    },
    "control": {
        "socket_mode": Field("str", "0660", "Permissions of the control socket: 0600 (owner) or 0660 (owner + group).", choices=("0600", "0660")),
    },
    "metrics": {
        "textfile": Field("str", "", "Path of a Prometheus textfile-collector file; empty disables. No TCP listener exists."),
    },
    "dashboard": {
        "enabled": Field("bool", True, "Serve the read-only risk dashboard (page, /api/status, /metrics) on dashboard.sock beside the control socket, same mode. Never on TCP."),
        "sample_s": Field("float", 5.0, "Seconds between points of the dashboard's in-memory equity curve.", min=0.1, max=3600),
        "points": Field("int", 720, "Points the equity curve keeps in memory (oldest dropped first; 720 x 5 s = the last hour).", min=10, max=100000),
    },
}

INSTRUMENT_FIELDS: dict[str, Field] = {
    "symbol": Field("str", _REQUIRED, "Unified symbol BASE/QUOTE.", pattern=r"^[A-Z0-9]{1,12}/[A-Z0-9]{1,12}$"),
    "tick_size": Field("dec", _REQUIRED, "Price increment.", min=0),
    "step_size": Field("dec", _REQUIRED, "Quantity increment.", min=0),
    "min_qty": Field("dec", Decimal("0"), "Minimum order quantity.", min=0),
    "max_qty": Field("dec", Decimal("1000000000"), "Maximum order quantity.", min=0),
    "min_notional": Field("dec", Decimal("0"), "Minimum order notional, quote currency.", min=0),
}


@dataclass(frozen=True)
class Config:
    bot: dict[str, Any]
    exchange: dict[str, Any]
    strategy: dict[str, Any]
    risk: dict[str, Any]
    control: dict[str, Any]
    metrics: dict[str, Any]
    dashboard: dict[str, Any]
    instruments: tuple[Instrument, ...]
    source: str = ""

    def instrument(self, symbol: str) -> Instrument:
        for i in self.instruments:
            if i.symbol == symbol:
                return i
        raise KeyError(symbol)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.bot["timezone"])


def _coerce(path: str, f: Field, value: Any, problems: list[str]) -> Any:
    kind = f.kind
    out: Any
    if kind == "bool":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true/false, got {value!r}")
            return None
        return value
    if kind == "str":
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
            return None
        out = value
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
            return None
        out = value
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{path}: expected a finite number, got {value!r}")
            return None
        out = float(value)
    else:  # dec
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            problems.append(f"{path}: expected a decimal number, got {value!r}")
            return None
        try:
            out = Decimal(str(value))
        except InvalidOperation:
            problems.append(f"{path}: expected a decimal number, got {value!r}")
            return None
        if not out.is_finite():
            problems.append(f"{path}: must be finite, got {value!r}")
            return None
    if f.choices is not None and out not in f.choices:
        problems.append(f"{path}: must be one of {', '.join(map(str, f.choices))}; got {out!r}")
    if f.pattern is not None and not re.fullmatch(f.pattern, out):
        problems.append(f"{path}: {out!r} does not match {f.pattern}")
    if kind != "str" and (f.min is not None or f.max is not None):
        conv = (lambda v: Decimal(str(v))) if kind == "dec" else (lambda v: v)
        if f.min is not None and out < conv(f.min):
            problems.append(f"{path}: must be >= {f.min}, got {out}")
        if f.max is not None and out > conv(f.max):
            problems.append(f"{path}: must be <= {f.max}, got {out}")
    return out


def _section(name: str, raw: Any, fields: dict[str, Field], problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{name}: expected a table")
        raw = {}
    for key in raw:
        if key not in fields:
            close = [k for k in fields if k.split("_")[0] == str(key).split("_")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{name}.{key}: unknown key{hint}")
    for key, f in fields.items():
        if key in raw:
            out[key] = _coerce(f"{name}.{key}", f, raw[key], problems)
        elif f.default is _REQUIRED:
            problems.append(f"{name}.{key}: required")
            out[key] = None
        else:
            out[key] = f.default
    return out


def _consistency(c: dict[str, dict[str, Any]], instruments: list[dict[str, Any]], problems: list[str]) -> None:
    def ok(*vals: Any) -> bool:
        return all(v is not None for v in vals)

    b, x, s, r = c["bot"], c["exchange"], c["strategy"], c["risk"]
    if ok(b["timezone"]):
        try:
            ZoneInfo(b["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"bot.timezone: unknown time zone {b['timezone']!r}")
    if x["dead_man_switch"] and ok(x["dead_man_timeout_s"], b["loop_interval_s"]) \
            and x["dead_man_timeout_s"] < 5 * b["loop_interval_s"]:
        problems.append(f"exchange.dead_man_timeout_s ({x['dead_man_timeout_s']}) must be at least 5 x bot.loop_interval_s "
                        f"({b['loop_interval_s']}): the switch is refreshed once per iteration")
    if x["kind"] == "ccxt" and not x["id"]:
        problems.append("exchange.id: required when exchange.kind = 'ccxt'")
    if x["api_url"] and not re.fullmatch(r"https://[^/\s]+", x["api_url"]):
        problems.append(f"exchange.api_url: must be https://host[:port] with no path (TLS is mandatory), got {x['api_url']!r}")
    if x["ca_bundle"] and not Path(x["ca_bundle"]).is_file():
        problems.append(f"exchange.ca_bundle: {x['ca_bundle']!r} is not a readable file")
    if x["kind"] == "paper" and ok(x["series"]) and x["series"] != "generated" and not Path(x["series"]).is_file():
        problems.append(f"exchange.series: {x['series']!r} is neither 'generated' nor a readable CSV file")
    if ok(s["fast"], s["slow"]) and s["fast"] >= s["slow"]:
        problems.append(f"strategy.fast ({s['fast']}) must be below strategy.slow ({s['slow']})")
    if ok(s["stop_atr"], s["target_atr"], r["min_reward_risk"]) and \
            Decimal(str(s["target_atr"])) / Decimal(str(s["stop_atr"])) < r["min_reward_risk"]:
        problems.append(f"strategy.target_atr/stop_atr ({s['target_atr']}/{s['stop_atr']}) is below risk.min_reward_risk "
                        f"({r['min_reward_risk']}): every entry would be denied")
    if ok(r["daily_loss_reduce_pct"], r["max_daily_loss_pct"]) and r["daily_loss_reduce_pct"] >= r["max_daily_loss_pct"]:
        problems.append(f"risk.daily_loss_reduce_pct ({r['daily_loss_reduce_pct']}) must be below risk.max_daily_loss_pct ({r['max_daily_loss_pct']})")
    if ok(r["vol_z_exit"], r["vol_z_enter"]) and r["vol_z_exit"] >= r["vol_z_enter"]:
        problems.append(f"risk.vol_z_exit ({r['vol_z_exit']}) must be below risk.vol_z_enter ({r['vol_z_enter']}) (hysteresis)")
    if ok(r["max_orders_per_minute"], r["breaker_orders_per_minute"]) and r["max_orders_per_minute"] >= r["breaker_orders_per_minute"]:
        problems.append("risk.max_orders_per_minute must be below risk.breaker_orders_per_minute (the throttle must act before the breaker)")
    if ok(r["max_order_notional"], r["max_total_exposure"]) and r["max_order_notional"] > r["max_total_exposure"]:
        problems.append("risk.max_order_notional must not exceed risk.max_total_exposure")
    if x["kind"] == "paper" and ok(r["equity_floor"], x["starting_balance"]) and r["equity_floor"] >= x["starting_balance"] > 0:
        problems.append("risk.equity_floor must be below exchange.starting_balance (the bot would boot KILLED)")
    if not instruments:
        problems.append("instruments: at least one [[instruments]] entry is required")
    seen: set[str] = set()
    for i, inst in enumerate(instruments):
        p = f"instruments[{i}]"
        sym = inst.get("symbol")
        if sym in seen:
            problems.append(f"{p}.symbol: duplicate {sym!r}")
        if sym:
            seen.add(sym)
            if ok(b["quote"]) and "/" in sym and sym.split("/")[1] != b["quote"]:
                problems.append(f"{p}.symbol: quote of {sym!r} differs from bot.quote {b['quote']!r}")
        for k in ("tick_size", "step_size"):
            if inst.get(k) is not None and inst[k] <= 0:
                problems.append(f"{p}.{k}: must be > 0")
        if ok(inst.get("min_qty"), inst.get("max_qty")) and inst["min_qty"] > inst["max_qty"]:
            problems.append(f"{p}: min_qty exceeds max_qty")


def parse(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; raise ConfigError listing every problem."""
    problems: list[str] = []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: not valid TOML: {e}"]) from None
    for key in raw:
        if key not in FIELDS and key != "instruments":
            problems.append(f"{key}: unknown section")
    sections = {name: _section(name, raw.get(name), fields, problems) for name, fields in FIELDS.items()}
    raw_inst = raw.get("instruments", [])
    insts: list[dict[str, Any]] = []
    if not isinstance(raw_inst, list):
        problems.append("instruments: expected an array of tables [[instruments]]")
        raw_inst = []
    for i, item in enumerate(raw_inst):
        insts.append(_section(f"instruments[{i}]", item, INSTRUMENT_FIELDS, problems))
    _consistency(sections, insts, problems)
    if problems:
        raise ConfigError(problems)
    instruments = tuple(
        Instrument(symbol=d["symbol"], base=d["symbol"].split("/")[0], quote=d["symbol"].split("/")[1],
                   tick_size=d["tick_size"], step_size=d["step_size"], min_qty=d["min_qty"],
                   max_qty=d["max_qty"], min_notional=d["min_notional"]) for d in insts)
    return Config(instruments=instruments, source=source, **sections)


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); TOML files are UTF-8"]) from None
    return parse(text, str(p))

