"""ATR trailing stops, kept in sync with positions.

A stop exists exactly while a position exists (dust is no position): `sync()` adds one for a position
without a stop (from the entry's planned stop, else ATR below the average price)
and drops stops of flat instruments. `trail()` only ever raises a stop. Stops
are persisted in the ledger, so a restart keeps the level it had reached; they
are enforced by the bot (market sell when the last price trades through), and
the resulting order is protective: the risk guard never blocks it.
"""
from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from .model import Instrument, Position
from .store import Store


class TrailingStops:
    def __init__(self, store: Store, instruments: dict[str, Instrument], stop_atr: float):
        self.store, self.instruments, self.k = store, instruments, stop_atr
        self.levels: dict[str, tuple[Decimal, Decimal | None]] = store.stops()
        self._f: dict[str, float] = {s: float(v[0]) for s, v in self.levels.items()}

    def _tick(self, symbol: str, price: float) -> Decimal:
        t = self.instruments[symbol].tick_size
        return (Decimal(repr(price)) / t).to_integral_value(rounding=ROUND_DOWN) * t

    def set(self, symbol: str, stop: Decimal, take_profit: Decimal | None) -> None:
        self.levels[symbol] = (stop, take_profit)
        self._f[symbol] = float(stop)
        self.store.set_stop(symbol, stop, take_profit)

    def trail(self, symbol: str, close: float, atr: float) -> None:
        """Raise the stop to close - k*ATR if that is higher (never lowers it)."""
        cur = self._f.get(symbol)
        if cur is None or atr <= 0:
            return
        cand = close - self.k * atr
        if cand > cur * 1.0000001 and cand > 0:
            self.set(symbol, self._tick(symbol, cand), self.levels[symbol][1])

    def sync(self, positions: dict[str, Position], planned, atr: dict[str, float]) -> None:
        """`planned(symbol)` returns (stop, take_profit) of the latest entry on it, or None; called only
        for a position without a stop (one newest-first lookup, not a pass over the order history)."""
        for sym, pos in positions.items():
            if self._holds(sym, pos.qty) and sym not in self.levels:
                stop, tp = planned(sym) or (None, None)
                if stop is None:
                    a = atr.get(sym, 0.0)
                    stop = self._tick(sym, max(float(pos.avg_price) - self.k * a, float(pos.avg_price) * 0.5))
                self.set(sym, stop, tp)
        for sym in list(self.levels):
            p = positions.get(sym)
            if p is None or not self._holds(sym, p.qty):
                del self.levels[sym]
                self._f.pop(sym, None)
                self.store.set_stop(sym, None)

    def _holds(self, symbol: str, qty) -> bool:
        inst = self.instruments.get(symbol)
        return inst.holds(qty) if inst else qty > 0

    def hit(self, symbol: str, price: float) -> str | None:
        """'stop' or 'target' if the price has reached either, else None."""
        lv = self.levels.get(symbol)
        if lv is None:
            return None
        if price <= self._f[symbol]:
            return "stop"
        if lv[1] is not None and price >= float(lv[1]):
            return "target"
        return None
