"""The ccxt path against a local HTTPS Binance (never the internet), TLS verification on.

Proves: client order ids pass through, a timeout is resolved by client id (the
create is sent once), a duplicate-id rejection is fetched not re-sent, garbage
is an error not a crash, and credentials never reach logs, ledger or status.
"""
import json
import time
from decimal import Decimal as D

import pytest

pytest.importorskip("ccxt", reason="ccxt extra not installed (pip install 'hardkit-bot[ccxt]')")

from hardkit_bot.config import parse  # noqa: E402
from hardkit_bot.engine import Engine  # noqa: E402
from hardkit_bot.exchange.base import ExchangeError  # noqa: E402
from hardkit_bot.exchange.ccxt_adapter import CcxtExchange  # noqa: E402
from hardkit_bot.exchange.paper import PaperExchange  # noqa: E402
from hardkit_bot.model import Intent, OrderStatus, OrderType, Side, TradingState  # noqa: E402
from hardkit_bot.store import Store  # noqa: E402

from binance_sim import BinanceSim, make_ca_and_cert  # noqa: E402
from bot_helpers import config_text  # noqa: E402

KEY = "test-api-key-7f3a9c2e41d8"
SECRET = "test-api-secret-b16e0d4c9a5f2e87"


@pytest.fixture
def sim(tmp_path):
    cfg = parse(config_text())
    paper = PaperExchange(tmp_path / "venue.sqlite", {i.symbol: i for i in cfg.instruments}, bar_seconds=0.05)
    time.sleep(0.12)
    s = BinanceSim(paper, KEY, SECRET, tmp_path)
    yield s
    s.close()
    paper.close()


def adapter(sim, **kw):
    return CcxtExchange("binance", KEY, SECRET, sandbox=True, timeout_ms=kw.pop("timeout_ms", 1500),
                        ca_bundle=str(sim.ca), api_url=sim.url, **kw)


@pytest.fixture
def engine(sim, tmp_path):
    cfg = parse(config_text(grace=5.0))
    ex = adapter(sim)
    store = Store(tmp_path / "ledger.sqlite")
    eng = Engine(cfg, store, ex, live=False)
    eng.start()
    eng.step()
    return eng


def buy(eng, n):
    px = eng.market.last["BTC/USDT"][0]
    i = Intent(f"t{n}", "BTC/USDT", Side.BUY, D("0.01"), px, stop_price=(px * D("0.99")).quantize(D("0.01")),
               take_profit=(px * D("1.03")).quantize(D("0.01")))
    return eng.om.submit(i, "USDT")


def posts(sim):
    return [p for m, path, p in sim.requests if m == "POST" and path == "/api/v3/order"]


def test_sandbox_first_and_tls_verification_stays_on(sim):
    ex = adapter(sim)
    assert ex.client.isSandboxModeEnabled and ex.client.verify is True
    assert ex.ticker("BTC/USDT")[0] > 0
    unpinned = CcxtExchange("binance", KEY, SECRET, sandbox=True, timeout_ms=1500, api_url=sim.url)
    with pytest.raises(ExchangeError, match="(?i)certificate"):
        unpinned.ticker("BTC/USDT")               # our CA is not trusted by default: verification is real
    with pytest.raises(ExchangeError, match="no sandbox"):
        CcxtExchange("kraken", None, None, sandbox=True)


def test_client_order_ids_pass_through(engine, sim):
    r = buy(engine, 1)
    assert r.status is OrderStatus.FILLED
    [sent] = posts(sim)
    assert sent["newClientOrderId"] == r.client_order_id
    [o] = [o for o in sim.paper.all_orders()]
    assert o.client_order_id == r.client_order_id
    fills = engine.store.fill_ids()
    assert fills == {f.trade_id for f in sim.paper.order_trades("BTC/USDT", r.client_order_id)}


def test_timeout_is_resolved_by_client_id_and_never_resent(engine, sim):
    sim.delay_create = 2.5                         # accepted, answer after the 1.5 s client timeout
    r = buy(engine, 1)
    assert r.status is OrderStatus.FILLED
    assert len(posts(sim)) == 1                    # the create went out exactly once
    row = engine.store.order(r.client_order_id)
    assert "timed out" in row["last_error"] or "timeout" in row["last_error"]
    lookups = [p for m, path, p in sim.requests if m == "GET" and path == "/api/v3/order"]
    assert lookups and lookups[0]["origClientOrderId"] == r.client_order_id
    assert len(sim.paper.all_orders()) == 1


def test_duplicate_id_rejection_is_fetched_not_resent(engine, sim):
    sim.paper.inject("duplicate_response")         # venue accepted it but answers -2010 "Duplicate order sent."
    r = buy(engine, 1)
    assert r.status is OrderStatus.FILLED
    assert len(posts(sim)) == 1
    assert engine.store.order(r.client_order_id)["last_error"] == "duplicate client id"
    assert len(sim.paper.all_orders()) == 1


def test_garbage_is_an_error_not_a_crash(engine, sim):
    sim.paper.inject("garbage")                    # the venue fails on the next ticker
    engine.step()                                  # logged, data not refreshed, no exception
    assert engine.sm.effective.value == "ACTIVE"


def test_secrets_never_reach_logs_ledger_or_status(sim, bot, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "exchange-api-key").write_text(KEY + "\n")
    (creds / "exchange-api-secret").write_text(SECRET + "\n")
    bot.write_config(config_text().replace('kind = "paper"', f'kind = "ccxt"\nid = "binance"\napi_url = "{sim.url}"\n'
                                           f'ca_bundle = "{sim.ca}"\ntimeout_ms = 2000'))
    sim.echo_secret_error = True                   # the first answer quotes the secret back
    p = bot.start(env={"CREDENTIALS_DIRECTORY": str(creds), "HARDKIT_BOT_LOG": "DEBUG"})
    bot.wait_for((bot.state / "control.sock").exists, what="control socket")
    bot.wait_for(lambda: any(path == "/api/v3/account" for _, path, _ in sim.requests), what="signed requests")
    cmdline = (open(f"/proc/{p.pid}/cmdline", "rb").read() + open(f"/proc/{p.pid}/environ", "rb").read()).decode(errors="replace")
    status = bot.cli("status", "--json")
    assert status.returncode == 0
    p.terminate()
    assert p.wait(20) == 0
    ledger = b"".join(f.read_bytes() for f in bot.state.iterdir() if f.name.startswith("ledger.sqlite"))
    text = bot.logs()
    assert "Illegal characters" in text           # the poisoned error was logged ...
    for leak in (SECRET, KEY):
        assert leak not in text                    # ... without the secret
        assert leak.encode() not in ledger
        assert leak not in status.stdout + status.stderr
        assert leak not in cmdline
    st = json.loads(status.stdout)
    assert st["state"] in ("ACTIVE", "REDUCING", "HALTED")

def test_deleted_ledger_through_ccxt_sees_the_history_without_client_ids(engine, sim, tmp_path):
    assert buy(engine, 1).status is OrderStatus.FILLED
    engine.store.close()
    for f in tmp_path.glob("ledger.sqlite*"):
        f.unlink()
    eng = Engine(engine.cfg, Store(tmp_path / "ledger.sqlite"), adapter(sim), live=False)
    rep = eng.start()
    assert rep.fresh_ledger and len(rep.foreign_trades) == 1
    assert "order " in rep.foreign_trades[0]                       # named by the exchange's order id
    v = eng.sm.view()
    assert v.state is TradingState.HALTED and "fresh ledger" in v.reason and "BTC" in v.reason


def test_ccxt_sends_the_resting_stop_as_a_binance_stop_loss(engine, sim):
    assert buy(engine, 1).status is OrderStatus.FILLED
    engine.step()
    [req] = [p for m, path, p in sim.requests if m == "POST" and path == "/api/v3/order" and p["type"] != "MARKET"]
    assert req["type"] == "STOP_LOSS" and req["side"] == "SELL"
    assert D(req["stopPrice"]) == engine.stops.levels["BTC/USDT"][0]
    [o] = [o for o in sim.paper.all_orders() if o.order_type is OrderType.STOP]
    assert o.status is OrderStatus.OPEN and o.client_order_id == req["newClientOrderId"]
    assert engine.store.order(o.client_order_id)["status"] == "OPEN"   # the adapter read it back as our stop
    engine.close_position("BTC/USDT", "flatten")
    assert [x.status for x in sim.paper.all_orders() if x.order_type is OrderType.STOP] == [OrderStatus.CANCELED]


def test_binance_base_coin_fees_are_accounted_exactly_and_a_restart_is_clean(engine, sim, tmp_path):
    assert buy(engine, 1).status is OrderStatus.FILLED
    [fee_asset] = {r["fee_asset"] for r in engine.store.conn.execute("SELECT fee_asset FROM fills")}
    assert fee_asset == "BTC"                                      # commissionAsset of a Binance spot buy
    assert engine.store.positions()["BTC/USDT"].qty == sim.paper.balances().total("BTC") == D("0.00999")
    cid = engine.close_position("BTC/USDT", "stop-loss")           # the full ledger amount
    assert engine.store.order(cid)["status"] == "FILLED", engine.store.order(cid)["last_error"]
    assert engine.store.positions()["BTC/USDT"].qty == sim.paper.balances().total("BTC") == 0
    engine.store.close()
    eng = Engine(engine.cfg, Store(tmp_path / "ledger.sqlite"), adapter(sim), live=False)
    rep = eng.start()
    assert rep.mismatches == [] and eng.sm.effective is TradingState.ACTIVE, eng.sm.view().reason


def test_no_dead_mans_switch_through_ccxt_binance_spot_is_reported_and_never_called(engine, sim):
    assert engine.exchange.supports_dead_man is False                 # ccxt: has['cancelAllOrdersAfter']
    assert engine.status()["dead_man_switch"] == "unsupported"
    n = len(sim.requests)
    engine.exchange.cancel_all_after(60)                       # a no-op: no request reaches the venue
    assert len(sim.requests) == n
    okx = CcxtExchange("okx", None, None, sandbox=True)        # a venue that has one (constructed offline)
    assert okx.supports_dead_man is True


class KrakenSwitchVenue:
    """Just enough of Kraken's REST API over local HTTPS for ccxt's kraken class to load (no) markets and
    arm its dead-man's switch: it records each CancelAllOrdersAfter request's form fields."""

    def __init__(self, certdir):
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qsl
        self.ca, cert, key = make_ca_and_cert(certdir)
        self.switch_calls: list[dict] = []
        venue = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, result):
                data = json.dumps({"error": [], "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):                              # /0/public/AssetPairs: no markets needed
                self._answer({})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.path == "/0/private/CancelAllOrdersAfter":
                    venue.switch_calls.append(dict(parse_qsl(body)))
                self._answer({"currentTime": "2026-01-01T00:00:00Z", "triggerTime": "2026-01-01T00:01:00Z"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_ccxt_maps_the_switch_to_cancel_all_orders_after_where_the_venue_has_it(tmp_path):
    venue = KrakenSwitchVenue(tmp_path)
    try:
        ex = CcxtExchange("kraken", "kraken-test-key", "a3Jha2VuLXRlc3Qtc2VjcmV0LWJ5dGVz", sandbox=False,
                          timeout_ms=3000, ca_bundle=str(venue.ca), api_url=venue.url)
        assert ex.supports_dead_man is True
        ex.cancel_all_after(60)                                  # armed: 60 s (Kraken counts seconds)
        ex.cancel_all_after(0)                                   # disarmed
        assert [c["timeout"] for c in venue.switch_calls] == ["60", "0"]
    finally:
        venue.close()


def test_ccxt_leaves_the_bots_decimal_arithmetic_alone(engine, sim):
    """ccxt's precision helpers switch the thread's decimal context to half-up rounding and trap
    Underflow; the bot's own arithmetic (risk, fees, PnL) must keep Python's default context."""
    import decimal

    buy(engine, 1)
    engine.step()
    assert posts(sim), "the order went through ccxt (its precision helpers ran)"
    ctx = decimal.getcontext()
    assert ctx.rounding == decimal.ROUND_HALF_EVEN and not ctx.traps[decimal.Underflow]
    assert D("0.125").quantize(D("0.01")) == D("0.12")  # half-even, as in a replay
