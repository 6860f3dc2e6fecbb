"""Typed trading objects shared by every layer.

Money and quantities are `Decimal` end to end: binary floats cannot represent
exchange tick and step sizes exactly, and a rounding error on a size check is a
limit breach. Objects are frozen so a risk check can never mutate what it judges.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)

#: Binance's clientOrderId pattern; the strictest common denominator we target.
CLIENT_ID_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,32}$")


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"


class OrderType(str, enum.Enum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"       # a resting stop-market sell: becomes a market order when the price trades at its trigger


class OrderStatus(str, enum.Enum):
    """Life cycle of one intent/order row in the ledger.

    PENDING_SUBMIT is written durably *before* any network I/O. UNKNOWN means the
    create call's outcome is not known (timeout); it is resolved by client id and
    never re-sent. ABANDONED: the exchange provably never received it.
    EXTERNAL: an order on the account that is not ours (reconciliation).
    """
    PENDING_SUBMIT = "PENDING_SUBMIT"
    UNKNOWN = "UNKNOWN"
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    ABANDONED = "ABANDONED"
    EXTERNAL = "EXTERNAL"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def live(self) -> bool:
        """Could still execute on the exchange (counts as exposure and pending balance)."""
        return self in _LIVE


_TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED,
                       OrderStatus.ABANDONED})
_LIVE = frozenset({OrderStatus.PENDING_SUBMIT, OrderStatus.UNKNOWN, OrderStatus.OPEN,
                   OrderStatus.PARTIALLY_FILLED})


class TradingState(str, enum.Enum):
    """Ordered by severity: a higher state never relaxes by itself (latched)."""
    ACTIVE = "ACTIVE"          # everything the risk pipeline allows
    REDUCING = "REDUCING"      # only reduce-only / protective orders
    HALTED = "HALTED"          # no strategy orders; open entries cancelled; stops still protect
    KILLED = "KILLED"          # flattened; nothing but protective orders; needs manual reset

    severity: int              # 0..3 in the order above (set below)


# A plain attribute per member: a property looking the member up in a dict hashed it (Enum.__hash__,
# a Python call) every time, and the breakers and the effective state read it on every bar.
for _n, _s in enumerate(TradingState):
    _s.severity = _n


@dataclass(frozen=True, slots=True)
class Instrument:
    """Exchange trading rules for one symbol (spot, long-only)."""
    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal

    def holds(self, qty: Decimal) -> bool:
        """True if `qty` is a position and not dust: dust (what fees in the base coin leave behind
        below the step or minimum size) cannot be sold, so it is no position to protect or close."""
        return qty >= max(self.min_qty, self.step_size)


@dataclass(frozen=True, slots=True)
class Intent:
    """What the strategy (or an operator/protective path) wants to do.

    `key` makes an intent idempotent: the same decision produced twice (e.g. after
    a restart replays the last bar) carries the same key and is denied as a duplicate.
    `ref_price` is the price the decision was made at (for market orders, the
    price used for notional/risk checks). `stop_price`/`take_profit` are required
    for entries: risk per trade and reward:risk are computed from them.
    """
    key: str
    instrument: str
    side: Side
    qty: Decimal
    ref_price: Decimal
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    take_profit: Decimal | None = None
    reduce_only: bool = False
    protective: bool = False   # stop-loss, flatten, volatility auto-close
    reason: str = ""

    @property
    def price(self) -> Decimal:
        return self.limit_price if self.limit_price is not None else self.ref_price


@dataclass(frozen=True, slots=True)
class Fill:
    trade_id: str
    client_order_id: str
    instrument: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal          # in `fee_asset`
    ts: float
    fee_asset: str = ""   # currency of the fee; "" = the instrument's quote (what older records meant)
    order_id: str = ""    # the exchange's order id (trade history may lack the client id)

    @property
    def fee_in_base(self) -> bool:
        """Binance spot takes a buy's fee from the base coin it delivers (unless paid in BNB)."""
        return bool(self.fee_asset) and self.fee_asset == base_of(self.instrument)

    @property
    def fee_in_quote(self) -> bool:
        return not self.fee_asset or self.fee_asset == quote_of(self.instrument)


def base_of(symbol: str) -> str:
    """Base currency of a unified symbol ("BTC/USDT" -> "BTC"), ccxt's and our config's convention."""
    return symbol.partition("/")[0]


def quote_of(symbol: str) -> str:
    return symbol.partition("/")[2].partition(":")[0]


@dataclass(frozen=True, slots=True)
class ExchangeOrder:
    """An order as the exchange reports it (normalised by the adapter)."""
    exchange_id: str
    client_order_id: str | None
    instrument: str
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None
    status: OrderStatus
    filled: Decimal
    avg_price: Decimal | None
    ts: float
    trigger: Decimal | None = None    # stop orders: the trigger price


@dataclass(slots=True)
class Position:
    """Long-only spot position built from our own fills."""
    instrument: str
    qty: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO

    def apply(self, side: Side, qty: Decimal, price: Decimal, fee: Decimal, fee_base: Decimal = ZERO) -> Decimal:
        """Apply a fill; return the realized PnL (net of this fill's fee) it closed.

        `fee` is a fee paid in quote, `fee_base` one taken from the base coin: a buy then
        delivers `qty - fee_base` (the cost basis spreads the whole notional over what is
        held), a sell uses up `qty + fee_base`. What is held is exactly what the venue holds."""
        if side is Side.BUY:
            new_qty = self.qty + qty - fee_base
            self.avg_price = ((self.avg_price * self.qty) + price * qty + fee) / new_qty if new_qty > 0 else ZERO
            self.qty = new_qty
            return ZERO
        closed = min(qty + fee_base, self.qty)
        pnl = price * min(qty, closed) - self.avg_price * closed - fee   # proceeds - cost basis of all used up
        self.qty -= closed
        if self.qty == ZERO:
            self.avg_price = ZERO
        self.realized_pnl += pnl
        return pnl


@dataclass(frozen=True, slots=True)
class Bar:
    ts: float      # bar open time, epoch seconds
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


@dataclass(frozen=True, slots=True)
class Balance:
    free: Decimal
    total: Decimal


@dataclass
class AccountView:
    """Exchange-reported balances by asset (total = free + locked)."""
    balances: dict[str, Balance] = field(default_factory=dict)

    def free(self, asset: str) -> Decimal:
        b = self.balances.get(asset)
        return b.free if b else ZERO

    def total(self, asset: str) -> Decimal:
        b = self.balances.get(asset)
        return b.total if b else ZERO
