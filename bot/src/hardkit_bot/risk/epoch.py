"""What a manual reset starts: a new risk epoch.

A reset that only flipped the latch to ACTIVE re-tripped at the next evaluation, because
the loss streak, the equity peak and the daily anchor still held the numbers that had
tripped. A reset therefore writes, in the same transaction as the latch (and with an
audit record carrying the operator's note):

- the loss streak = 0;
- the equity peak = the equity now (offline, where no equity is known: deleted, so the
  first equity the bot sees becomes the peak);
- the daily anchor is kept (the day's loss budget stays spent: a daily-loss halt trips
  again) unless the operator says `new_day`; then today's anchor = the equity now;
- `risk_epoch` = {ts, equity, new_day}: the equity floor reads it (`EquityFloor`): below
  the configured floor, the epoch's floor is equity x (1 - max_drawdown%).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..store import LOSS_STREAK


def epoch_meta(now: float, equity: float | None, new_day: bool, tz: ZoneInfo) -> dict[str, Any]:
    """Meta key -> new value (None deletes the key) for a reset at `now`."""
    meta: dict[str, Any] = {LOSS_STREAK: 0, "equity_peak": equity,
                            "risk_epoch": {"ts": now, "equity": equity, "new_day": new_day}}
    if new_day:
        meta["daily_anchor"] = {"day": datetime.fromtimestamp(now, tz).date().isoformat(), "equity": equity}
    return meta
