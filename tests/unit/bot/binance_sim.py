"""A faithful subset of Binance's spot REST API over HTTPS on 127.0.0.1, backed by the paper exchange.

Enough for ccxt's binance class to load markets, read tickers/klines/balances,
and create (MARKET, LIMIT, STOP_LOSS with stopPrice), fetch (by origClientOrderId),
cancel and list orders and trades. Commissions are reported in the asset the
paper exchange charged them in (a buy: the base coin), as Binance spot does.
Requests are authenticated like Binance's (X-MBX-APIKEY header + HMAC-SHA256
signature over the query and body), so a wrong key or secret fails as it would.
The TLS certificate is issued by a throwaway CA made here with `cryptography`;
the client verifies against that CA (verification stays on).

Test controls: `delay_create` (seconds to sleep after an order was accepted and
before answering: a timeout with the order live), `echo_secret_error` (answer
the next call with an error that quotes the secret, as a buggy venue might).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hardkit_bot.exchange.base import DuplicateClientOrderId, OrderNotFound, OrderRejected
from hardkit_bot.model import OrderStatus, OrderType, Side

_TYPE = {OrderType.MARKET: "MARKET", OrderType.LIMIT: "LIMIT", OrderType.STOP: "STOP_LOSS"}
_STATUS = {OrderStatus.OPEN: "NEW", OrderStatus.PARTIALLY_FILLED: "PARTIALLY_FILLED", OrderStatus.FILLED: "FILLED",
           OrderStatus.CANCELED: "CANCELED", OrderStatus.REJECTED: "REJECTED"}


def make_ca_and_cert(directory: Path, address: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for `address`/localhost. Returns (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hardkit test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class BinanceSim:
    def __init__(self, paper, api_key: str, secret: str, certdir: Path, host: str = "127.0.0.1", port: int = 0):
        self.paper, self.api_key, self.secret = paper, api_key, secret
        self.ca, cert, key = make_ca_and_cert(certdir, host)
        self.delay_create = 0.0
        self.echo_secret_error = False
        self.requests: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                sim._handle(self, "GET")

            def do_POST(self):
                sim._handle(self, "POST")

            def do_DELETE(self):
                sim._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- plumbing ---------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        u = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode()
        params = dict(parse_qsl(u.query)) | dict(parse_qsl(body))
        with self._lock:
            self.requests.append((method, u.path, params))
        try:
            status, payload = self._route(method, u.path, params, u.query, body, h.headers)
        except Exception as e:  # a bug in the sim must be visible, not a hang
            status, payload = 500, {"code": -1000, "msg": f"sim error: {type(e).__name__}: {e}"}
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout test)

    def _auth(self, query: str, body: str, headers) -> tuple[int, dict] | None:
        if headers.get("X-MBX-APIKEY") != self.api_key:
            return 401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}
        signed = "&".join(x for x in (query, body) if x)
        payload, _, sig = signed.rpartition("&signature=")
        want = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, want):
            return 400, {"code": -1022, "msg": "Signature for this request is not valid."}
        return None

    def _route(self, method, path, p, query, body, headers):
        if self.echo_secret_error:
            self.echo_secret_error = False
            return 400, {"code": -1100, "msg": f"Illegal characters found in parameter 'secret'; legal range is {self.secret}."}
        if path == "/api/v3/exchangeInfo":
            return 200, self._exchange_info()
        if path == "/api/v3/ticker/24hr":
            return 200, self._ticker(p["symbol"])
        if path == "/api/v3/klines":
            return 200, self._klines(p)
        if path == "/api/v3/time":
            return 200, {"serverTime": int(time.time() * 1000)}
        err = self._auth(query, body, headers)
        if err:
            return err
        if path == "/api/v3/account":
            return 200, self._account()
        if path == "/api/v3/order":
            return {"POST": self._create, "GET": self._get, "DELETE": self._cancel}[method](p)
        if path == "/api/v3/openOrders":
            return 200, [self._order(o) for o in self.paper.open_orders(self._unified(p.get("symbol")))]
        if path == "/api/v3/myTrades":
            return 200, self._trades(p)
        return 404, {"code": -1, "msg": f"not simulated: {method} {path}"}

    # ---- translation --------------------------------------------------------------------
    def _unified(self, sym: str | None) -> str | None:
        if sym is None:
            return None
        for s, i in self.paper.instruments.items():
            if i.base + i.quote == sym:
                return s
        raise OrderRejected(f"unknown symbol {sym}")

    def _exchange_info(self):
        syms = []
        for i in self.paper.instruments.values():
            syms.append({
                "symbol": i.base + i.quote, "status": "TRADING", "baseAsset": i.base, "baseAssetPrecision": 8,
                "quoteAsset": i.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                "orderTypes": ["LIMIT", "MARKET", "STOP_LOSS"],
                "isSpotTradingAllowed": True, "isMarginTradingAllowed": False, "permissions": ["SPOT"],
                "permissionSets": [["SPOT"]],
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": str(i.tick_size), "maxPrice": "10000000", "tickSize": str(i.tick_size)},
                    {"filterType": "LOT_SIZE", "minQty": str(i.min_qty), "maxQty": str(i.max_qty), "stepSize": str(i.step_size)},
                    {"filterType": "NOTIONAL", "minNotional": str(i.min_notional), "applyMinToMarket": True,
                     "maxNotional": "9000000", "applyMaxToMarket": False, "avgPriceMins": 5}]})
        return {"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": [], "exchangeFilters": [],
                "symbols": syms}

    def _ticker(self, sym):
        px, ts = self.paper.ticker(self._unified(sym))
        p = str(px)
        return {"symbol": sym, "lastPrice": p, "openPrice": p, "highPrice": p, "lowPrice": p, "bidPrice": p,
                "askPrice": p, "volume": "1", "quoteVolume": p, "openTime": int(ts * 1000) - 86400000,
                "closeTime": int(ts * 1000), "count": 1}

    def _klines(self, p):
        bars = self.paper.candles(self._unified(p["symbol"]), int(p.get("startTime", 0)) / 1000.0 - 1e-9)
        dt_ms = int(self.paper.bar_seconds * 1000)
        return [[int(b.ts * 1000), repr(b.open), repr(b.high), repr(b.low), repr(b.close), repr(b.volume),
                 int(b.ts * 1000) + dt_ms - 1, "0", 1, "0", "0", "0"] for b in bars[: int(p.get("limit", 500))]]

    def _account(self):
        acct = self.paper.balances()
        return {"makerCommission": 10, "takerCommission": 10, "canTrade": True, "canWithdraw": False,
                "canDeposit": False, "updateTime": 0, "accountType": "SPOT", "permissions": ["SPOT"],
                "balances": [{"asset": a, "free": str(b.free), "locked": str(b.total - b.free)}
                             for a, b in acct.balances.items()]}

    def _order(self, o):
        status = _STATUS[o.status]
        return {"symbol": o.instrument.replace("/", ""), "orderId": int(o.exchange_id), "orderListId": -1,
                "clientOrderId": o.client_order_id, "price": str(o.price or "0"), "origQty": str(o.qty),
                "executedQty": str(o.filled), "cummulativeQuoteQty": str(o.filled * (o.avg_price or Decimal(0))),
                "status": status, "timeInForce": "GTC", "type": _TYPE[o.order_type], "side": o.side.value.upper(),
                **({"stopPrice": str(o.trigger)} if o.trigger is not None else {}),
                "time": int(o.ts * 1000), "updateTime": int(o.ts * 1000), "transactTime": int(o.ts * 1000),
                "isWorking": True, "workingTime": int(o.ts * 1000), "origQuoteOrderQty": "0"}

    def _error(self, e):
        if isinstance(e, DuplicateClientOrderId):
            return 400, {"code": -2010, "msg": "Duplicate order sent."}
        if isinstance(e, OrderNotFound):
            return 400, {"code": -2013, "msg": "Order does not exist."}
        return 400, {"code": -2010, "msg": f"Account has insufficient balance for requested action. ({e})"}

    def _create(self, p):
        try:
            otype = {v: k for k, v in _TYPE.items()}.get(p["type"])
            if otype is None:
                return 400, {"code": -1116, "msg": "Invalid orderType."}
            o = self.paper.create_order(p["newClientOrderId"], self._unified(p["symbol"]), Side(p["side"].lower()),
                                        otype, Decimal(p["quantity"]), Decimal(p["price"]) if "price" in p else None,
                                        Decimal(p["stopPrice"]) if "stopPrice" in p else None)
        except (DuplicateClientOrderId, OrderRejected, OrderNotFound) as e:
            return self._error(e)
        if self.delay_create:
            d, self.delay_create = self.delay_create, 0.0
            time.sleep(d)           # accepted, but the answer comes too late
        return 200, self._order(o)

    def _get(self, p):
        try:
            return 200, self._order(self.paper.fetch_order(self._unified(p["symbol"]), p["origClientOrderId"]))
        except OrderNotFound as e:
            return self._error(e)

    def _cancel(self, p):
        try:
            return 200, self._order(self.paper.cancel_order(self._unified(p["symbol"]), p["origClientOrderId"]))
        except OrderNotFound as e:
            return self._error(e)

    def _trades(self, p):
        """myTrades: by orderId, or from startTime (oldest first), or the newest `limit`."""
        sym = self._unified(p["symbol"])
        start = int(p["startTime"]) / 1000.0 if "startTime" in p else None
        out = []
        for o in self.paper.all_orders():
            if o.instrument != sym or ("orderId" in p and o.exchange_id != str(p["orderId"])):
                continue
            for f in self.paper.order_trades(sym, o.client_order_id):
                if start is not None and f.ts < start:
                    continue
                out.append({"symbol": p["symbol"], "id": f.trade_id, "orderId": int(o.exchange_id), "orderListId": -1,
                            "price": str(f.price), "qty": str(f.qty), "quoteQty": str(f.qty * f.price),
                            "commission": str(f.fee), "commissionAsset": f.fee_asset,
                            "time": int(f.ts * 1000), "isBuyer": f.side is Side.BUY, "isMaker": False,
                            "isBestMatch": True})
        out.sort(key=lambda t: t["time"])
        limit = int(p.get("limit", 500))
        return out[:limit] if start is not None else out[-limit:]
