"""Market data intake: the only way prices enter the bot, validated on the way in.

A price that is NaN, infinite, zero or negative, a candle that is inconsistent
(high below close, ...) or not strictly after the previous one is rejected with
a reason and never reaches the strategy or the risk snapshot. Rejected data does
not refresh the "last seen" time, so persistent garbage trips the stale-data
breaker instead of crashing anything.

Two rules keep hostile or broken feeds from steering the bot:

- **Time comes from the local clock.** A tick or candle stamped more than
  `max_ahead_s` beyond the local clock is rejected: otherwise one future-dated
  tick would outrank every real price after it (ticks older than the newest one
  are refused) and freeze equity, stops and loss breakers on a wrong price. The
  age of a feed is measured against the local clock, never the venue's stamps.
- **A sanity band around recent prices.** A price (tick, or a candle's high/low)
  more than `sanity_ratio` times above or below the last accepted price of the
  instrument is rejected as absurd: a ×10 jump never becomes a price. The feed
  then goes stale (REDUCING) until sane data returns. The first price after a
  start has no reference and is accepted as is.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from decimal import Decimal

from .model import Bar

log = logging.getLogger(__name__)
_INF = math.inf

#: Default clock-skew tolerance (seconds a stamp may lie ahead of the local clock);
#: the config key `risk.max_data_ahead_s` overrides it.
MAX_AHEAD_S = 5.0
#: Default sanity band (factor around the last accepted price); `risk.price_sanity_ratio`.
SANITY_RATIO = 2.0


class MarketData:
    def __init__(self, clock=time.time, max_ahead_s: float = MAX_AHEAD_S, sanity_ratio: float = SANITY_RATIO) -> None:
        self.clock, self.max_ahead_s, self.sanity_ratio = clock, max_ahead_s, sanity_ratio
        self._lock = threading.Lock()
        self._last: dict[str, tuple[Decimal, float]] = {}
        self._floats: dict[str, tuple[float, float]] = {}   # accepted float ticks not yet made Decimal (see last)
        self._tick_ts: dict[str, float] = {}     # time of the newest accepted tick
        self.last_f: dict[str, float] = {}       # the same prices as floats, for per-bar monitoring
        self.last_bar_ts: dict[str, float] = {}
        self._ref: dict[str, float] = {}         # last accepted price (tick or candle close): the band's centre
        self.rejected = 0
        self.last_rejection: dict[str, str] = {}  # why the latest data for a symbol was refused (shown when stale)

    @property
    def last(self) -> dict[str, tuple[Decimal, float]]:
        """(price, time) of the newest accepted tick per instrument, prices as Decimal.

        A float tick (a replay's bar close, the paper exchange) becomes Decimal(str(price)) here,
        when something reads it, not on every tick: a replay reads prices only to trade, and the
        conversion was the largest single cost of its per-bar path."""
        if self._floats:
            with self._lock:
                for sym, (pf, ts) in self._floats.items():
                    self._last[sym] = (Decimal(repr(pf)), ts)
                self._floats.clear()
        return self._last

    def on_tick(self, symbol: str, price, ts: float) -> bool:
        if type(price) is float:                 # no parsing; the same checks as for a Decimal below
            if not 0.0 < price < _INF:
                return self._reject(symbol, f"price {price!r} is not positive and finite")
            p = None
        else:
            try:
                p = Decimal(str(price))
            except Exception:
                return self._reject(symbol, f"unparseable price {price!r}")
            if not p.is_finite() or p <= 0:
                return self._reject(symbol, f"price {price!r} is not positive and finite")
        if not math.isfinite(ts):
            return self._reject(symbol, f"tick time {ts!r} is not finite")
        ahead = ts - self.clock()
        if ahead > self.max_ahead_s:
            return self._reject(symbol, f"tick stamped {ahead:.1f}s ahead of the local clock (tolerance {self.max_ahead_s}s)")
        pf = price if p is None else float(p)
        ref = self._ref.get(symbol)
        if ref is not None and not (pf <= ref * self.sanity_ratio and pf * self.sanity_ratio >= ref):
            return self._reject(symbol, self._band_reason(ref, pf))
        with self._lock:
            prev = self._tick_ts.get(symbol)
            if prev is not None and ts < prev:
                return self._reject(symbol, f"tick at {ts} older than the last one at {prev}")
            self._tick_ts[symbol] = ts
            if p is None:
                self._floats[symbol] = (pf, ts)
            else:
                self._floats.pop(symbol, None)
                self._last[symbol] = (p, ts)
            self.last_f[symbol] = pf
            self._ref[symbol] = pf
        return True

    def accept_bar(self, symbol: str, bar: Bar) -> bool:
        """True if the bar is valid, not from the future, inside the sanity band and
        strictly newer than the last accepted one."""
        t, o, h, lo, c = bar.ts, bar.open, bar.high, bar.low, bar.close
        # written as positive comparisons so that NaN (every comparison False) is rejected too
        if not (lo > 0 and h >= o and h >= c and lo <= o and lo <= c and h < _INF and t - t == 0):
            return self._reject(symbol, f"inconsistent or non-finite candle {(t, o, h, lo, c)}")
        ahead = t - self.clock()
        if ahead > self.max_ahead_s:
            return self._reject(symbol, f"candle opening {ahead:.1f}s ahead of the local clock (tolerance {self.max_ahead_s}s)")
        ref = self._ref.get(symbol)
        if ref is not None and not (h <= ref * self.sanity_ratio and lo * self.sanity_ratio >= ref):
            return self._reject(symbol, self._band_reason(ref, h if h > ref * self.sanity_ratio else lo))
        last = self.last_bar_ts.get(symbol)
        if last is not None and t <= last:
            return self._reject(symbol, f"out-of-order candle at {t} (last {last})")
        self.last_bar_ts[symbol] = t
        self._ref[symbol] = c
        return True

    def _band_reason(self, ref: float, bad: float) -> str:
        return f"price {bad:g} is {bad / ref:.3g}x the last accepted {ref:g} (sanity band x{self.sanity_ratio:g})"

    def _reject(self, symbol: str, why: str) -> bool:
        self.rejected += 1
        self.last_rejection[symbol] = why
        log.warning("rejected market data for %s: %s", symbol, why)
        return False

    def prices(self) -> dict[str, tuple[Decimal, float]]:
        last = self.last
        with self._lock:
            return dict(last)
