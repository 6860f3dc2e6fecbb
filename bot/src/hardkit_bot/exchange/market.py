"""Price series for the paper exchange and backtests.

`generate()` makes a seeded random walk with trending regimes (so a trend
strategy has something to do) and realistic bar ranges; the same seed always
gives the same series, which is what makes paper runs and backtests repeatable.
`load_csv()` reads ts,open,high,low,close[,volume] rows, rejecting garbage and
out-of-order candles with a clear error.
"""
from __future__ import annotations

import csv
import math
import random
from pathlib import Path

from ..model import Bar
from .base import BadExchangeData, sane_bar


def generate(n: int, seed: int = 42, start_price: float = 30000.0, bar_seconds: float = 60.0,
             t0: float = 0.0, vol: float = 0.0015, regime_bars: int = 300) -> list[Bar]:
    rng = random.Random(seed)
    bars: list[Bar] = []
    price = start_price
    drift = 0.0
    for i in range(n):
        if i % regime_bars == 0:
            drift = rng.choice((-1.0, 0.0, 1.0)) * vol * rng.uniform(0.05, 0.25)
        o = price
        c = o * math.exp(drift + rng.gauss(0.0, vol))
        wiggle = abs(rng.gauss(0.0, vol * 0.6))
        h = max(o, c) * (1.0 + wiggle)
        l = min(o, c) * (1.0 - abs(rng.gauss(0.0, vol * 0.6)))
        bars.append(Bar(t0 + i * bar_seconds, o, h, l, c, rng.uniform(1.0, 10.0)))
        price = c
    return bars


def load_csv(path: str | Path) -> list[Bar]:
    bars: list[Bar] = []
    with open(path, newline="", encoding="utf-8") as f:
        try:
            for lineno, row in enumerate(csv.reader(f), 1):
                if not row or row[0].strip().lower() in ("ts", "timestamp", "time") or row[0].startswith("#"):
                    continue
                try:
                    bar = sane_bar(*row[:6])
                except (BadExchangeData, ValueError, TypeError) as e:
                    raise BadExchangeData(f"{path}:{lineno}: {e}") from None
                if bars and bar.ts <= bars[-1].ts:
                    raise BadExchangeData(f"{path}:{lineno}: candle at {bar.ts} is not after the previous one ({bars[-1].ts})")
                bars.append(bar)
        except UnicodeDecodeError as e:   # raised while reading, not parsing: every caller expects BadExchangeData
            raise BadExchangeData(f"{path}: not UTF-8 text (byte {e.start} of a read block: {e.reason})") from None
    if not bars:
        raise BadExchangeData(f"{path}: no candles")
    return bars
