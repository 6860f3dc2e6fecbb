"""The exchange contract every adapter implements, and its typed errors.

The order manager relies on three distinctions an adapter must keep:
`ExchangeTimeout` (the outcome is unknown: never retry a create, resolve by
client id), `DuplicateClientOrderId` (an order with this id exists: fetch it)
and `OrderRejected` (the exchange said no: the order does not exist).
`BadExchangeData` is raised when a response does not make sense; the engine
treats it like missing data, never as a fact.
"""
from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Protocol

from ..model import AccountView, Bar, ExchangeOrder, Fill, OrderType, Side


class ExchangeError(Exception):
    """Any failure talking to the exchange."""


class ExchangeTimeout(ExchangeError):
    """No answer in time: the request may or may not have taken effect."""


class DuplicateClientOrderId(ExchangeError):
    """The exchange already has an order with this client id."""


class OrderRejected(ExchangeError):
    """The exchange refused the order; it does not exist there."""


class OrderNotFound(ExchangeError):
    """No order with this id on the exchange."""


class BadExchangeData(ExchangeError):
    """The exchange answered with something that cannot be true (NaN, negative price, ...)."""


class Exchange(Protocol):
    def ticker(self, symbol: str) -> tuple[Decimal, float]: ...
    def candles(self, symbol: str, since: float) -> list[Bar]: ...
    def balances(self) -> AccountView: ...
    def create_order(self, client_id: str, symbol: str, side: Side, order_type: OrderType,
                     qty: Decimal, price: Decimal | None, trigger: Decimal | None = None) -> ExchangeOrder:
        """`trigger` only for OrderType.STOP (a resting stop-market sell)."""
    def fetch_order(self, symbol: str, client_id: str) -> ExchangeOrder: ...
    def cancel_order(self, symbol: str, client_id: str) -> ExchangeOrder: ...
    def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]: ...
    def order_trades(self, symbol: str, client_id: str, exchange_id: str) -> list[Fill]:
        """The order's trades, each fee in the currency the venue charged it (`Fill.fee_asset`)."""
    def recent_trades(self, symbol: str, since: float | None, limit: int = 500) -> list[Fill]:
        """The account's trades on `symbol`, oldest first: the first `limit` from `since`, or the newest
        `limit` when `since` is None (Binance's myTrades). The client id may be "" (then `order_id` is set)."""
    @property
    def supports_stops(self) -> bool:
        """True if the venue takes resting stop-loss orders (OrderType.STOP)."""
    @property
    def supports_dead_man(self) -> bool:
        """True if the venue has a dead-man's switch (`cancel_all_after`)."""
    def cancel_all_after(self, timeout_s: float) -> None:
        """The venue's dead-man's switch (ccxt `cancelAllOrdersAfter`): unless called again within
        `timeout_s`, the venue cancels EVERY open order of the account, protective stops included.
        0 disarms it. A no-op where `supports_dead_man` is False."""
    def close(self) -> None: ...


def sane_price(value, what: str) -> Decimal:
    """A finite, positive Decimal price, or BadExchangeData."""
    try:
        d = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        raise BadExchangeData(f"{what}: not a number: {value!r}") from None
    if not d.is_finite() or d <= 0:
        raise BadExchangeData(f"{what}: not a positive finite price: {value!r}")
    return d


def sane_qty(value, what: str) -> Decimal:
    try:
        d = Decimal(str(value if value is not None else 0))
    except (InvalidOperation, TypeError, ValueError):
        raise BadExchangeData(f"{what}: not a number: {value!r}") from None
    if not d.is_finite() or d < 0:
        raise BadExchangeData(f"{what}: not a non-negative finite amount: {value!r}")
    return d


def sane_bar(ts, o, h, l, c, v=0.0) -> Bar:
    vals = [float(x) for x in (ts, o, h, l, c, v)]
    if not all(math.isfinite(x) for x in vals):
        raise BadExchangeData(f"bar with non-finite values: {vals}")
    ts, o, h, l, c, v = vals
    if min(o, h, l, c) <= 0 or v < 0 or h < max(o, c, l) or l > min(o, c, h):
        raise BadExchangeData(f"inconsistent bar: {vals}")
    return Bar(ts, o, h, l, c, v)
