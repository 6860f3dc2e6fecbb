"""ccxt adapter for real exchanges (optional extra: pip install 'hardkit-bot[ccxt]').

Rules it keeps:
- one ccxt client instance per process (ccxt's rate limiter is per instance);
- sandbox/testnet mode is switched on *first*, before any other call, when the
  config asks for it and the exchange has one (`has['sandbox']`); asking for a
  sandbox the exchange lacks is an error, never a silent fall-through to live;
- TLS verification stays on; a private CA bundle may be pinned (`ca_bundle`),
  but verification cannot be switched off from here;
- the create call is made once, with `params={'clientOrderId': cid}`, and its
  exceptions are mapped to the order manager's distinctions: RequestTimeout /
  NetworkError -> ExchangeTimeout (outcome unknown), a duplicate-id answer ->
  DuplicateClientOrderId, InvalidOrder/InsufficientFunds -> OrderRejected.
  ccxt never retries a create by itself, and neither do we;
- fees are taken in the currency the venue reports (`fee.currency`: Binance spot
  takes a buy's fee from the base coin received) and passed on with it, so the
  ledger holds exactly what the exchange holds;
- a protective stop (OrderType.STOP) is sent through ccxt's unified
  `stopLossPrice` param as a market-type order (Binance spot: STOP_LOSS), only
  where the venue says it has stop-loss orders (`supports_stops`);
- ccxt runs in a copy of the thread's decimal context: its precision helpers set the
  context's rounding (half-up) and trap Underflow as a side effect, which would otherwise
  change every Decimal the bot computes after its first ccxt call (risk, fees, PnL);
- the dead-man's switch maps to ccxt's `cancel_all_orders_after(ms)` only where the
  venue has it (`has['cancelAllOrdersAfter']`, e.g. okx, bybit, kraken; not Binance
  spot); elsewhere `supports_dead_man` is False and arming is a no-op.
"""
from __future__ import annotations

import threading
from decimal import Decimal, localcontext

from ..model import AccountView, Balance, Bar, ExchangeOrder, Fill, OrderStatus, OrderType, Side
from .base import (BadExchangeData, DuplicateClientOrderId, ExchangeError, ExchangeTimeout, OrderNotFound,
                   OrderRejected, sane_bar, sane_price, sane_qty)

_STATUS = {"open": OrderStatus.OPEN, "closed": OrderStatus.FILLED, "canceled": OrderStatus.CANCELED,
           "cancelled": OrderStatus.CANCELED, "expired": OrderStatus.CANCELED, "rejected": OrderStatus.REJECTED}
_DUPLICATE_MARKERS = ("duplicate order", "duplicate client", "clientorderid is duplicated", "order already exists")


def _pinned_session(ca_bundle: str):
    """A requests Session that verifies against `ca_bundle` (ccxt passes verify=True per request)."""
    import requests

    class PinnedSession(requests.Session):
        def request(self, method, url, **kw):
            if kw.get("verify") is False:
                raise ExchangeError("refusing a request with TLS verification disabled")
            kw["verify"] = ca_bundle
            return super().request(method, url, **kw)

    return PinnedSession()


class CcxtExchange:
    def __init__(self, exchange_id: str, api_key: str | None, secret: str | None, *, sandbox: bool = True,
                 timeout_ms: int = 10000, ca_bundle: str | None = None, api_url: str | None = None,
                 timeframe: str = "1m", options: dict | None = None):
        with localcontext():
            self._connect(exchange_id, api_key, secret, sandbox, timeout_ms, ca_bundle, api_url, timeframe, options)

    def _connect(self, exchange_id, api_key, secret, sandbox, timeout_ms, ca_bundle, api_url, timeframe, options):
        import ccxt
        self.ccxt = ccxt
        if not hasattr(ccxt, exchange_id):
            raise ExchangeError(f"ccxt has no exchange {exchange_id!r}")
        params: dict = {"enableRateLimit": True, "timeout": timeout_ms,
                        "options": {"fetchCurrencies": False, "fetchMarkets": {"types": ["spot"]},
                                    "fetchMargins": False, "warnOnFetchOpenOrdersWithoutSymbol": False,
                                    **(options or {})}}
        if api_key is not None:
            params.update(apiKey=api_key, secret=secret)
        if ca_bundle:
            params["session"] = _pinned_session(ca_bundle)
        self.client = getattr(ccxt, exchange_id)(params)
        if sandbox:
            if not self.client.has.get("sandbox"):
                raise ExchangeError(f"{exchange_id} has no sandbox/testnet; set exchange.sandbox = false to trade live")
            self.client.set_sandbox_mode(True)
        if api_url:  # replace scheme://host of every API family, keep the paths (after sandbox mode swapped them)
            from urllib.parse import urlsplit
            api = self.client.urls["api"]
            for k, v in (api.items() if isinstance(api, dict) else []):
                if isinstance(v, str):
                    api[k] = api_url.rstrip("/") + urlsplit(v).path
        self.timeframe = timeframe
        self.bar_seconds = self.client.parse_timeframe(timeframe)
        self.client.verify = True
        self._secrets = [v for v in (api_key, secret) if v and len(v) >= 4]
        self._lock = threading.Lock()
        self._markets_loaded = False

    def _scrub(self, e: BaseException) -> str:
        """Exception text without credentials: it may end up in a state reason, the ledger or logs."""
        text = str(e)
        cause = e.__cause__ or e.__context__
        if cause is not None:   # e.g. the SSL error behind a NetworkError: the operator needs it
            text = f"{text} ({type(cause).__name__}: {str(cause)[:300]})"
        for v in self._secrets:
            text = text.replace(v, "***")
        return text

    def _call(self, fn, *a, **kw):
        ccxt = self.ccxt
        with self._lock, localcontext():  # ccxt's changes to the decimal context stay in this copy
            try:
                if not self._markets_loaded:
                    self.client.load_markets()
                    self._markets_loaded = True
                return fn(*a, **kw)
            except ccxt.OrderNotFound as e:
                raise OrderNotFound(self._scrub(e)) from None
            except ccxt.DuplicateOrderId as e:
                raise DuplicateClientOrderId(self._scrub(e)) from None
            except (ccxt.InvalidOrder, ccxt.InsufficientFunds) as e:
                if any(m in str(e).lower() for m in _DUPLICATE_MARKERS):
                    raise DuplicateClientOrderId(self._scrub(e)) from None
                raise OrderRejected(self._scrub(e)) from None
            except ccxt.RequestTimeout as e:
                raise ExchangeTimeout(self._scrub(e)) from None
            except ccxt.NetworkError as e:
                raise ExchangeTimeout(f"network: {self._scrub(e)}") from None
            except ccxt.BaseError as e:
                raise ExchangeError(self._scrub(e)) from None
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise BadExchangeData(f"unparseable exchange response: {type(e).__name__}: {self._scrub(e)}") from None

    # ---- market data ----------------------------------------------------------
    def ticker(self, symbol: str) -> tuple[Decimal, float]:
        t = self._call(self.client.fetch_ticker, symbol)
        price = sane_price(t.get("last") or t.get("close"), f"{symbol} ticker")
        ts = t.get("timestamp")
        return price, (ts / 1000.0 if ts else self.client.milliseconds() / 1000.0)

    def candles(self, symbol: str, since: float) -> list[Bar]:
        rows = self._call(self.client.fetch_ohlcv, symbol, self.timeframe, int(since * 1000) + 1, 500)
        bars = [sane_bar(r[0] / 1000.0, r[1], r[2], r[3], r[4], r[5] or 0) for r in rows]
        # the last candle is still forming: only closed ones count
        now = self.client.milliseconds() / 1000.0
        return [b for b in bars if b.ts + self.bar_seconds <= now]

    def balances(self) -> AccountView:
        b = self._call(self.client.fetch_balance)
        out = {}
        for asset, total in (b.get("total") or {}).items():
            if total is None:
                continue
            out[asset] = Balance(sane_qty(b["free"].get(asset), f"free {asset}"), sane_qty(total, f"total {asset}"))
        return AccountView(out)

    # ---- orders -----------------------------------------------------------------
    @property
    def supports_stops(self) -> bool:
        return bool(self.client.has.get("createStopLossOrder"))

    @property
    def supports_dead_man(self) -> bool:
        return bool(self.client.has.get("cancelAllOrdersAfter"))

    def cancel_all_after(self, timeout_s: float) -> None:
        if self.supports_dead_man:
            self._call(self.client.cancel_all_orders_after, int(timeout_s * 1000))

    def create_order(self, client_id: str, symbol: str, side: Side, order_type: OrderType,
                     qty: Decimal, price: Decimal | None, trigger: Decimal | None = None) -> ExchangeOrder:
        params: dict = {"clientOrderId": client_id}
        kind = order_type.value
        if order_type is OrderType.STOP:
            if trigger is None or not self.supports_stops:
                raise OrderRejected(f"{self.client.id}: no stop-loss orders through ccxt" if trigger else "stop without trigger")
            kind, params["stopLossPrice"] = "market", float(trigger)
        o = self._call(self.client.create_order, symbol, kind, side.value, float(qty),
                       None if price is None else float(price), params)
        return self._order(o, symbol, client_id)

    def fetch_order(self, symbol: str, client_id: str) -> ExchangeOrder:
        o = self._call(self.client.fetch_order, None, symbol, {"clientOrderId": client_id})
        return self._order(o, symbol, client_id)

    def cancel_order(self, symbol: str, client_id: str) -> ExchangeOrder:
        self._call(self.client.cancel_order, None, symbol, {"clientOrderId": client_id})
        return self.fetch_order(symbol, client_id)

    def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        rows = self._call(self.client.fetch_open_orders, symbol)
        return [self._order(o, o.get("symbol") or symbol, o.get("clientOrderId")) for o in rows]

    def order_trades(self, symbol: str, client_id: str, exchange_id: str) -> list[Fill]:
        rows = self._call(self.client.fetch_my_trades, symbol, None, None, {"orderId": exchange_id})
        return [self._fill(t, symbol, client_id) for t in rows if str(t.get("order")) == str(exchange_id)]

    def recent_trades(self, symbol: str, since: float | None, limit: int = 500) -> list[Fill]:
        rows = self._call(self.client.fetch_my_trades, symbol, None if since is None else int(since * 1000), limit)
        return [self._fill(t, symbol, t.get("clientOrderId") or "") for t in rows]

    def _fill(self, t: dict, symbol: str, client_id: str) -> Fill:
        """One ccxt trade; its fee stays in the currency the venue charged (one fee currency per trade)."""
        fees = [f for f in (t.get("fees") or [t.get("fee")]) if f and f.get("cost")]
        currencies = {f.get("currency") for f in fees}
        if len(currencies) > 1:
            raise BadExchangeData(f"trade {t.get('id')}: fees in several currencies {sorted(map(str, currencies))}")
        cost = sum((sane_qty(f["cost"], "fee") for f in fees), Decimal(0))
        quote = symbol.partition("/")[2].partition(":")[0]
        return Fill(str(t["id"]), client_id, symbol, Side(t["side"]), sane_qty(t["amount"], "trade amount"),
                    sane_price(t["price"], "trade price"), cost, (t.get("timestamp") or 0) / 1000.0,
                    fee_asset=(currencies.pop() or quote) if currencies else quote, order_id=str(t.get("order") or ""))

    def _order(self, o: dict, symbol: str | None, client_id: str | None) -> ExchangeOrder:
        if not isinstance(o, dict) or o.get("id") is None:
            raise BadExchangeData(f"order response without an id: {o!r}"[:300])
        status = _STATUS.get(o.get("status") or "", None)
        if status is None:
            raise BadExchangeData(f"order {o.get('id')}: unknown status {o.get('status')!r}")
        price = o.get("price")
        avg = o.get("average")
        trigger = o.get("triggerPrice") or o.get("stopLossPrice") or o.get("stopPrice")
        if trigger:
            otype = OrderType.STOP
        else:
            otype = OrderType(o["type"]) if o.get("type") in ("market", "limit") else OrderType.LIMIT
        return ExchangeOrder(
            exchange_id=str(o["id"]), client_order_id=o.get("clientOrderId") or client_id, instrument=symbol or o["symbol"],
            side=Side(o["side"]), order_type=otype,
            qty=sane_qty(o.get("amount"), "amount"), price=sane_price(price, "price") if price else None,
            status=status, filled=sane_qty(o.get("filled") or 0, "filled"),
            avg_price=sane_price(avg, "average") if avg else None, ts=(o.get("timestamp") or 0) / 1000.0,
            trigger=sane_price(trigger, "trigger") if trigger else None)

    def close(self) -> None:
        pass
