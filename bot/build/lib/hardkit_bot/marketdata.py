"""Market data intake: the only way prices enter the bot, validated on the way in.

A price that is NaN, infinite, zero or negative, a candle that is inconsistent
(high below close, ...) or not strictly after the previous one is rejected with
a reason and never reaches the strategy or the risk snapshot. Rejected data does
not refresh the "last seen" time, so persistent garbage trips the stale-data
breaker instead of crashing anything.
"""
from __future__ import annotations

import logging
import math
import threading
from decimal import Decimal

from .model import Bar

log = logging.getLogger(__name__)
_INF = math.inf


class MarketData:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last: dict[str, tuple[Decimal, float]] = {}
        self.last_f: dict[str, float] = {}       # the same prices as floats, for per-bar monitoring
        self.last_bar_ts: dict[str, float] = {}
        self.rejected = 0

    def on_tick(self, symbol: str, price, ts: float) -> bool:
        try:
            p = Decimal(str(price))
        except Exception:
            return self._reject(symbol, f"unparseable price {price!r}")
        if not p.is_finite() or p <= 0:
            return self._reject(symbol, f"price {price!r} is not positive and finite")
        if not math.isfinite(ts):
            return self._reject(symbol, f"tick time {ts!r} is not finite")
        with self._lock:
            prev = self.last.get(symbol)
            if prev is not None and ts < prev[1]:
                return self._reject(symbol, f"tick at {ts} older than the last one at {prev[1]}")
            self.last[symbol] = (p, ts)
            self.last_f[symbol] = float(p)
        return True

    def accept_bar(self, symbol: str, bar: Bar) -> bool:
        """True if the bar is valid and strictly newer than the last accepted one."""
        t, o, h, lo, c = bar.ts, bar.open, bar.high, bar.low, bar.close
        # written as positive comparisons so that NaN (every comparison False) is rejected too
        if not (lo > 0 and h >= o and h >= c and lo <= o and lo <= c and h < _INF and t - t == 0):
            return self._reject(symbol, f"inconsistent or non-finite candle {(t, o, h, lo, c)}")
        last = self.last_bar_ts.get(symbol)
        if last is not None and bar.ts <= last:
            return self._reject(symbol, f"out-of-order candle at {bar.ts} (last {last})")
        self.last_bar_ts[symbol] = bar.ts
        return True

    def _reject(self, symbol: str, why: str) -> bool:
        self.rejected += 1
        log.warning("rejected market data for %s: %s", symbol, why)
        return False

    def prices(self) -> dict[str, tuple[Decimal, float]]:
        with self._lock:
            return dict(self.last)
