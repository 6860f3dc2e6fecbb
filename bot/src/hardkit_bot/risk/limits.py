"""Circuit breakers: the portfolio-level limits that move the trading state.

Each breaker is small and owns one concern. Anything that must survive a
restart (the daily anchor, the equity peak, the loss streak, the risk epoch)
lives in the ledger's meta table, so a restart measures from the same anchor and
peak; `load()` re-reads it after a reset (`risk/epoch.py`) or a change made by
another process. Equity always includes unrealized PnL (positions marked at the
last price).

| breaker            | trips at                                   | to        | latched |
|--------------------|--------------------------------------------|-----------|---------|
| daily loss         | loss vs local midnight >= reduce / max %   | REDUCING / HALTED | yes |
| drawdown           | peak-to-trough >= max %                    | HALTED    | yes     |
| consecutive losses | N losing round trips in a row              | HALTED    | yes     |
| equity floor       | equity < floor                             | KILLED    | yes     |
| activity           | orders / rejects / cancels per minute      | HALTED    | yes     |
| stale data         | no valid data for stale_data_s (local clock) | REDUCING | no (clears when data returns) |
| volatility         | true-range z-score >= enter, or a one-bar move/gap >= gap % | REDUCING + auto-close | no (clears after N calm bars below exit) |
| loss overrun       | a position's loss > its planned risk x (1 + margin) | REDUCING + close | yes |
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ..model import TradingState
from ..store import LOSS_STREAK, Store

WINDOW_S = 60.0


@dataclass(frozen=True)
class Usage:
    """How much of one limit is used: the risk view."""
    name: str
    used: float
    limit: float

    @property
    def pct(self) -> float:
        return 100.0 * self.used / self.limit if self.limit else 0.0


Trip = tuple[TradingState, str]


class DailyLoss:
    """Loss of equity since local midnight in `tz`.

    The anchor is the equity recorded nearest before midnight: the bot's own last
    observation when it ran across midnight, else the ledger's last equity snapshot
    before midnight (the bot was down across midnight: a loss while it was down counts
    for the new day), else (a fresh ledger) the first equity seen. Within a day the
    anchor is persisted, so a restart compares with it and a loss while down counts too.
    """

    def __init__(self, store: Store, tz: ZoneInfo, reduce_pct: float, max_pct: float):
        self.store, self.tz, self.reduce_pct, self.max_pct = store, tz, reduce_pct, max_pct
        self.loss_pct = 0.0
        self._last_seen: tuple[float, float] | None = None   # (ts, equity) of the previous update
        self.load()

    def load(self) -> None:
        a = self.store.get_meta("daily_anchor")
        self.day, self.anchor = (a["day"], a["equity"]) if a else (None, None)
        self._day_start = self._day_end = 0.0   # [start, end) of self.day in epoch seconds

    def update(self, now: float, equity: float) -> list[Trip]:
        if not (self._day_start <= now < self._day_end):
            local = datetime.fromtimestamp(now, self.tz)
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            self._day_start = start.timestamp()
            self._day_end = (start + timedelta(days=1)).replace(tzinfo=self.tz).timestamp()
            day = local.date().isoformat()
            if day != self.day:
                self.day, self.anchor = day, self._equity_before(self._day_start, equity)
                self.store.set_meta("daily_anchor", {"day": day, "equity": self.anchor}, audit_kind="daily_anchor")
        if self.anchor is None:   # a new day chosen by an offline reset: anchored on the first equity seen
            self.anchor = equity
            self.store.set_meta("daily_anchor", {"day": self.day, "equity": equity}, audit_kind="daily_anchor")
        self._last_seen = (now, equity)
        self.loss_pct = max(0.0, (self.anchor - equity) * 100.0 / self.anchor) if self.anchor > 0 else 0.0
        if self.loss_pct >= self.max_pct:
            return [(TradingState.HALTED, f"max daily loss: {self.loss_pct:.2f}% >= {self.max_pct}% since {self.day} 00:00 {self.tz.key}")]
        if self.loss_pct >= self.reduce_pct:
            return [(TradingState.REDUCING, f"daily loss: {self.loss_pct:.2f}% >= {self.reduce_pct}% since {self.day} 00:00 {self.tz.key}")]
        return []

    def unchanged(self, now: float, equity: float) -> bool:
        """True if `update(now, equity)` would return what the previous update returned: the same
        day (anchor known) and the same equity. Records the observation as `update` does and
        computes nothing else: the engine's cheap path when equity has not moved (a flat book)."""
        last = self._last_seen
        if last is not None and last[1] == equity and self._day_start <= now < self._day_end \
                and self.anchor is not None:
            self._last_seen = (now, equity)
            return True
        return False

    def _equity_before(self, midnight: float, now_equity: float) -> float:
        seen = self._last_seen if self._last_seen and self._last_seen[0] < midnight else None
        known = [x for x in (seen, self.store.last_equity_before(midnight)) if x]
        return max(known, key=lambda x: x[0])[1] if known else now_equity

    def usage(self) -> Usage:
        return Usage("daily_loss_pct", self.loss_pct, self.max_pct)


class Drawdown:
    """Peak-to-trough on equity (not on a sum of trade returns)."""

    #: The persisted peak may lag the in-memory one by at most this fraction (0.01 %),
    #: which bounds ledger writes in a rising market; restart understates drawdown by <= 0.01 points.
    PERSIST_STEP = 1e-4

    def __init__(self, store: Store, max_pct: float):
        self.store, self.max_pct = store, max_pct
        self.dd_pct = 0.0
        self.load()

    def load(self) -> None:
        self.peak = self._saved = self.store.get_meta("equity_peak")

    def update(self, now: float, equity: float) -> list[Trip]:
        if self.peak is None or equity > self.peak:
            self.peak = equity
            if self._saved is None or equity > self._saved * (1 + self.PERSIST_STEP):
                self.store.set_meta("equity_peak", equity)
                self._saved = equity
        self.dd_pct = (self.peak - equity) * 100.0 / self.peak if self.peak > 0 else 0.0
        if self.dd_pct >= self.max_pct:
            return [(TradingState.HALTED, f"max drawdown: {self.dd_pct:.2f}% >= {self.max_pct}% from peak {self.peak:.2f}")]
        return []

    def usage(self) -> Usage:
        return Usage("drawdown_pct", self.dd_pct, self.max_pct)


class ConsecutiveLosses:
    """True consecutive losing round trips; the ledger resets the streak on a win."""

    def __init__(self, store: Store, limit: int):
        self.store, self.limit = store, limit
        self.refresh()

    def refresh(self) -> None:
        """Re-read the streak; the ledger updates it in the same transaction as the closing fill."""
        self.streak = int(self.store.get_meta(LOSS_STREAK, 0))

    load = refresh

    def update(self, now: float, equity: float) -> list[Trip]:
        if self.streak >= self.limit:
            return [(TradingState.HALTED, f"{self.streak} consecutive losing trades >= {self.limit}")]
        return []

    def usage(self) -> Usage:
        return Usage("consecutive_losses", self.streak, self.limit)


class EquityFloor:
    """Equity below the floor kills. After a reset made below the configured floor, the
    epoch's floor is where the drawdown limit from the reset equity would halt
    (`risk/epoch.py`): the reset accepts the loss so far, never an unlimited one."""

    def __init__(self, floor: float, store: Store | None = None, max_drawdown_pct: float = 100.0):
        self.configured, self.store, self.max_dd = floor, store, max_drawdown_pct
        self.equity = math.inf
        self.load()

    def load(self) -> None:
        self.epoch = self.store.get_meta("risk_epoch") if self.store is not None else None

    @property
    def floor(self) -> float:
        base = self.epoch.get("equity") if self.epoch else None
        if base is None or base >= self.configured:
            return self.configured
        return min(self.configured, base * (1 - self.max_dd / 100.0))

    def update(self, now: float, equity: float) -> list[Trip]:
        self.equity = equity
        if self.epoch is not None and self.epoch.get("equity") is None:   # an offline reset: first equity seen
            self.epoch = {**self.epoch, "equity": equity}
            self.store.set_meta("risk_epoch", self.epoch, audit_kind="risk_epoch")
        floor = self.floor
        if floor > 0 and equity < floor:
            return [(TradingState.KILLED, f"equity {equity:.2f} below floor {floor:.2f}")]
        return []


class ActivityRate:
    """Order / reject / cancel counts in a rolling minute; a spike means the bot misbehaves."""

    def __init__(self, limits: dict[str, int]):
        self.limits = limits
        self.events: dict[str, deque[float]] = {k: deque() for k in limits}

    def record(self, kind: str, ts: float) -> None:
        self.events[kind].append(ts)

    def count(self, kind: str, now: float) -> int:
        q = self.events[kind]
        while q and q[0] < now - WINDOW_S:
            q.popleft()
        return len(q)

    def update(self, now: float, equity: float) -> list[Trip]:
        trips: list[Trip] = []
        if not any(self.events.values()):
            return trips
        for kind, limit in self.limits.items():
            n = self.count(kind, now)
            if n >= limit:
                trips.append((TradingState.HALTED, f"abnormal activity: {n} {kind} in the last minute >= {limit}"))
        return trips

    def usages(self, now: float) -> list[Usage]:
        return [Usage(f"{k}_per_minute", self.count(k, now), v) for k, v in self.limits.items()]


class StaleData:
    """Transient: no valid market data for an instrument within `stale_s`."""

    def __init__(self, symbols: list[str], stale_s: float, started: float):
        self.stale_s = stale_s
        self.last = {s: started for s in symbols}   # grace from boot

    def seen(self, symbol: str, ts: float) -> None:
        self.last[symbol] = ts

    def check(self, now: float, rejections: Mapping[str, str] | None = None) -> str | None:
        """The reason the feed is stale, or None. `rejections` (symbol -> why the latest data
        was refused) tells the operator whether data is missing or being rejected."""
        for t in self.last.values():      # the oldest within the limit: every one is (as min() would tell)
            if now - t > self.stale_s:
                break
        else:
            return None
        stale = []
        for s, t in self.last.items():
            if now - t > self.stale_s:
                why = (rejections or {}).get(s)
                stale.append(f"{s} {now - t:.0f}s" + (f" (last rejected: {why})" if why else ""))
        return f"stale or missing market data: {', '.join(stale)} (limit {self.stale_s}s)" if stale else None

    def usage(self, now: float) -> Usage:
        return Usage("data_age_s", max((now - t for t in self.last.values()), default=0.0), self.stale_s)


class Volatility:
    """Abnormal moves per bar, with hysteresis. Two triggers enter the breaker:

    - the bar's *true range* (high/low extended to the previous close, so a gap between
      bars counts) as a z-score against recent bars, >= `z_enter`;
    - a one-bar return: the close, or the gap to the open, moved >= `gap_pct` % from the
      previous close. A range z-score alone misses a gap: a bar that opens 20 % lower
      and trades quietly there has an ordinary range.

    It clears after `clear_bars` consecutive bars with z < `z_exit` and no gap.
    Incremental (O(1) per bar)."""

    def __init__(self, window: int, z_enter: float, z_exit: float, clear_bars: int, gap_pct: float = math.inf):
        self.window, self.z_enter, self.z_exit, self.clear_bars = window, z_enter, z_exit, clear_bars
        self.gap = gap_pct / 100.0
        self.ranges: deque[float] = deque()
        self._min_n = max(10, window // 2)   # bars of history before a z-score counts
        self.s1 = 0.0
        self.s2 = 0.0
        self.active = False
        self.calm = 0
        self.z = 0.0
        self.move_pct = 0.0          # the last bar's largest move from the previous close, %
        self.prev_close: float | None = None
        self.reason = ""

    def on_bar(self, high: float, low: float, close: float, open_: float | None = None) -> bool | None:
        """Feed a bar; returns True when the breaker enters, False when it clears, else None.

        Runs on every bar: written with plain comparisons where `max`/`abs` calls cost more than
        the arithmetic (each replaced `max` keeps its exact semantics: the first value unless a
        later one is greater)."""
        prev = self.prev_close
        self.prev_close = close
        hi, lo, move = high, low, 0.0
        if prev is not None and prev > 0:
            if prev > hi:
                hi = prev
            elif prev < lo:
                lo = prev
            move = close / prev - 1.0
            if open_ is not None:
                at_open = open_ / prev - 1.0
                if abs(at_open) > abs(move):
                    move = at_open
        r = (hi - lo) / close if close > 0 else 0.0
        self.move_pct = 100.0 * move
        ranges = self.ranges
        n = len(ranges)
        z = 0.0
        if n >= self._min_n:
            mean = self.s1 / n
            var = self.s2 / n - mean * mean
            if 0.0 > var:
                var = 0.0
            # floor the deviation at 10 % of the mean range: a flat, degenerate history must not
            # turn the first ordinary bar into a "spike"
            sd = math.sqrt(var)
            if 0.1 * mean > sd:
                sd = 0.1 * mean
            if 1e-12 > sd:
                sd = 1e-12
            z = (r - mean) / sd
        self.z = z
        gapped = move >= self.gap or -move >= self.gap
        spike = z >= self.z_enter or gapped
        change = None
        if not self.active and spike:
            self.active, self.calm, change = True, 0, True
            self.reason = (f"price gap: {self.move_pct:+.1f}% in one bar (limit {100 * self.gap:g}%)" if gapped
                           else f"range z-score {z:.1f} >= {self.z_enter}")
        elif self.active:
            self.calm = self.calm + 1 if z < self.z_exit and not gapped else 0
            if self.calm >= self.clear_bars:
                self.active, change = False, False
        if not (self.active and spike):   # keep spikes out of the baseline
            ranges.append(r)
            self.s1 += r
            self.s2 += r * r
            if n >= self.window:           # n + 1 > window after the append
                old = ranges.popleft()
                self.s1 -= old
                self.s2 -= old * old
        return change


class LossOverrun:
    """A position losing more than it was planned to risk, by a margin: the stop did not
    protect it (a gap through the stop, a missing stop, a refused exit). The position is
    closed and the event latched REDUCING with the figures, so a person looks at it
    before the next entry.

    Planned risk = qty x (average entry - planned stop) + both legs' fees, from the
    entry intent's stop; the loss is marked at the last price incl. the exit fee."""

    def __init__(self, margin_pct: float, fee_rate: float):
        self.factor = 1.0 + margin_pct / 100.0
        self.fee = fee_rate

    def check(self, symbol: str, qty: float, avg: float, planned_stop: float | None, last: float) -> str | None:
        if planned_stop is None or qty <= 0 or planned_stop >= avg:
            return None
        planned = qty * (avg - planned_stop) + qty * (avg + planned_stop) * self.fee
        loss = qty * (avg - last) + qty * last * self.fee
        if loss > planned * self.factor:
            return (f"loss on {symbol} {loss:.2f} exceeds its planned risk {planned:.2f} by "
                    f"{100 * (loss / planned - 1):.0f}% (limit {100 * (self.factor - 1):g}%)")
        return None
