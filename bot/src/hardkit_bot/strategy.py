"""A deliberately simple trend-following strategy: EMA crossover with ATR.

The strategy only *proposes*: it returns a signal and the ATR; sizing comes from
the risk budget (`pipeline.size_for_risk`) and every order still passes the
guard. Indicators are incremental (O(1) per bar) and use floats: they decide
direction, never money.
"""
from __future__ import annotations

import enum

from .model import Bar


class Signal(enum.Enum):
    NONE = 0
    ENTER_LONG = 1
    EXIT_LONG = 2


# Looking a member up on its Enum class costs ~0.3 µs on Python 3.11, and on_bar runs on every bar.
NO_SIGNAL, ENTER_LONG, EXIT_LONG = Signal.NONE, Signal.ENTER_LONG, Signal.EXIT_LONG

class TrendATR:
    """Long when the fast EMA is above the slow one by more than `band_atr` ATRs,
    out when it falls below by as much: the band is hysteresis against whipsaw
    (a bare crossover on noise trades constantly and pays fees every time)."""

    def __init__(self, fast: int, slow: int, atr_period: int, band_atr: float = 0.0):
        self.af = 2.0 / (fast + 1)
        self.as_ = 2.0 / (slow + 1)
        self.atr_n = atr_period
        self.warmup = max(slow, atr_period) + 1
        self.band = band_atr
        self.fast = self.slow = self.atr = 0.0
        self.prev_close = 0.0
        self.n = 0
        self.above = False

    def on_bar(self, bar: Bar) -> Signal:
        c = bar.close
        if self.n == 0:
            self.fast = self.slow = c
            self.atr = bar.high - bar.low
        else:
            tr = max(bar.high - bar.low, abs(bar.high - self.prev_close), abs(bar.low - self.prev_close))
            self.atr += (tr - self.atr) / self.atr_n
            self.fast += self.af * (c - self.fast)
            self.slow += self.as_ * (c - self.slow)
        self.prev_close = c
        self.n += 1
        spread = self.fast - self.slow
        width = self.band * self.atr
        above = spread > width if not self.above else spread >= -width
        crossed_up = above and not self.above
        crossed_down = self.above and not above
        self.above = above
        if self.n < self.warmup:
            return NO_SIGNAL
        if crossed_up:
            return ENTER_LONG
        if crossed_down:
            return EXIT_LONG
        return NO_SIGNAL
