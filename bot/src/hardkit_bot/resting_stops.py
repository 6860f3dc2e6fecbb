"""Exchange-side protective stops: a resting stop-loss order on the venue for every position.

Why: the trailing stop (`stops.py`) is enforced by the bot, so while the process is
dead nothing protects a position. A stop order resting on the exchange fires whether
the bot runs or not.

The desired state is the stop level the ledger already holds (the `stops` table,
committed before any exchange call: the intent comes first). `converge()` makes the
exchange follow it, one instrument at a time:
- a position and no live stop order -> place one: a protective, reduce-only STOP
  intent through `OrderManager.submit`, so it takes the same path as every order
  (risk check, PENDING_SUBMIT committed before the send, one client id, resolved by
  client id after a timeout);
- a live stop whose trigger or quantity is not the desired one -> cancel it, and
  place the new one only once the exchange confirms the old one is no longer live.
  Never two live stops at once: together they would sell more than the position
  (and a spot venue locks the coin for the first anyway). A crash between the two
  steps leaves no stop until the next iteration or start, never two;
- no position -> cancel the stop;
- an order we might have sent but cannot see yet (PENDING_SUBMIT, UNKNOWN) counts as
  live: nothing is placed until it is resolved.
Moves are rate-limited (`stop_move_min_s`): each is a cancel plus a new order, while
the bot's own stop still trails every bar. Before the bot sells a position itself
(exit, target, its own stop, flatten, kill) it `release()`s the resting stop, and
places none for `stop_move_min_s` (should that sell fail, it is retried every
iteration; a stop placed in between would only be cancelled again).

Only stops this module placed are managed (intent key `<symbol>:xstop:...`); a stop
adopted from a lost ledger is left alone for the operator. Start-up reconciliation
resolves live stop orders like any order, so one that fired while the bot was down
arrives in the ledger as the position's closing fill.

Dead-man's switch (ccxt `cancelAllOrdersAfter`, `deadman.py`): it cancels *every* open
order when the bot stops refreshing it, protective stops included, so it is armed only
while nothing but entries is live, and disarmed before a stop is sent (at its intent).
A dead bot's position therefore keeps its stop; a dead bot's lone resting entry is
cancelled by the venue after the timeout; an entry resting beside a stop is not covered
and is cancelled at the next start if it is older than the timeout.
"""
from __future__ import annotations

import logging
from decimal import ROUND_DOWN, Decimal

from .exchange.base import ExchangeError
from .model import Intent, Instrument, OrderStatus, OrderType, Position, Side
from .orders import OrderManager

log = logging.getLogger(__name__)

_LIVE = {s.value for s in OrderStatus if s.live}


class RestingStops:
    def __init__(self, om: OrderManager, instruments: dict[str, Instrument], quote: str, move_min_s: float):
        self.om, self.instruments, self.quote, self.move_min_s = om, instruments, quote, move_min_s
        self._last_move: dict[str, float] = {}     # when the stop on a symbol was last placed
        self._retry_at: dict[str, float] = {}      # after a refused placement: not before then
        self._seq = 0

    def live(self, symbol: str) -> list:
        """Our resting stop orders on `symbol` that are (or may be) live."""
        prefix = f"{symbol}:xstop:"
        return [r for r in self.om.store.live_orders()
                if r["instrument"] == symbol and r["order_type"] == OrderType.STOP.value
                and r["intent_key"].startswith(prefix)]

    def desired(self, symbol: str, pos: Position | None, level: Decimal | None) -> tuple[Decimal, Decimal] | None:
        """(trigger, qty) the exchange should hold, or None: the sellable position at the stop level
        (never more than the exchange says we hold: after a mismatch, protect what is certain)."""
        inst = self.instruments[symbol]
        if pos is None or level is None or not inst.holds(pos.qty):
            return None
        amount = min(pos.qty, self.om.account.total(inst.base)) if self.om.account.balances else pos.qty
        qty = (amount / inst.step_size).to_integral_value(rounding=ROUND_DOWN) * inst.step_size
        return (level, qty) if qty >= inst.min_qty else None

    def converge(self, positions: dict[str, Position], levels: dict, last: dict) -> None:
        """Make each instrument's resting stop match its position and stop level (see module doc)."""
        with self.om.lock:
            for symbol in self.instruments:
                try:
                    self._converge_one(symbol, positions.get(symbol), levels.get(symbol, (None, None))[0],
                                       last.get(symbol))
                except ExchangeError as e:
                    log.warning("resting stop on %s: %s (will retry)", symbol, e)

    def _converge_one(self, symbol: str, pos: Position | None, level: Decimal | None, last) -> None:
        want = self.desired(symbol, pos, level)
        live = self.live(symbol)
        if any(r["side"] == Side.SELL.value and r["order_type"] != OrderType.STOP.value
               for r in self.om.live_rows() if r["instrument"] == symbol):
            return                                      # the bot is selling this position: no stop now
        now = self.om.clock()
        if live:
            [row, *extra] = live
            same = want is not None and Decimal(row["stop_price"]) == want[0] and Decimal(row["qty"]) == want[1]
            if same and not extra:
                return
            if want is not None and not extra and Decimal(row["qty"]) == want[1] \
                    and now - self._last_move.get(symbol, 0.0) < self.move_min_s:
                return                                  # only the level moved, and it moved recently
            if not self._cancel(live):
                return                                  # may still be live: never a second one
        if want is None:
            return
        trigger, qty = want
        if last is None or trigger >= last[0]:
            return                                      # the market is at or below the stop: the bot sells
        if now < self._retry_at.get(symbol, 0.0):
            return                                      # a placement was just refused: do not hammer the venue
        self._last_move[symbol] = now
        self._seq += 1
        res = self.om.submit(Intent(key=f"{symbol}:xstop:{int(now * 1000)}:{self._seq}", instrument=symbol,
                                    side=Side.SELL, qty=qty, ref_price=last[0], order_type=OrderType.STOP,
                                    stop_price=trigger, reduce_only=True, protective=True,
                                    reason="resting stop-loss"), self.quote)
        if res.denial is not None or res.status is OrderStatus.REJECTED:
            self._retry_at[symbol] = now + self.move_min_s
            log.warning("resting stop on %s at %s not placed: %s", symbol, trigger,
                        res.denial or self.om.store.order(res.client_order_id)["last_error"])

    def _cancel(self, rows) -> bool:
        """Cancel these stop orders; True once none of them is live on the exchange."""
        for r in rows:
            cid = r["client_order_id"]
            if r["status"] in (OrderStatus.OPEN.value, OrderStatus.PARTIALLY_FILLED.value):
                self.om.cancel(cid)
            else:
                self.om.resolve(cid)
        return all(self.om.store.order(r["client_order_id"])["status"] not in _LIVE for r in rows)

    def release(self, symbol: str) -> bool:
        """Cancel the resting stop before the bot sells `symbol` itself; True if none is live now."""
        live = self.live(symbol)
        if not live:
            return True
        # if the bot's own sell then fails, it retries every iteration: no re-placing in between
        self._retry_at[symbol] = self.om.clock() + self.move_min_s
        with self.om.lock:
            try:
                return self._cancel(live)
            except ExchangeError as e:
                log.warning("releasing the resting stop on %s: %s", symbol, e)
                return False

    def trigger_of(self, symbol: str) -> str | None:
        live = self.live(symbol)
        return live[0]["stop_price"] if live else None
