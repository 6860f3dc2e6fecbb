"""The order path reads no row it has just written or already holds (issue 9, per-fill cost).

Every ledger read the order path dropped is counted here, so a change that brings one back shows."""
from decimal import Decimal as D

from hardkit_bot import audit, faults
from hardkit_bot.model import Fill, OrderStatus, Side

from bot_helpers import Rig  # noqa: F401  (the rig fixture builds it)


def _traced(store):
    seen = []
    store.conn.set_trace_callback(seen.append)
    return seen


def test_a_filled_market_order_reads_its_ledger_row_twice(rig):
    seen = _traced(rig.store)
    r = rig.buy()
    rig.store.conn.set_trace_callback(None)
    assert r.status is OrderStatus.FILLED
    reads = [s for s in seen if s.startswith("SELECT * FROM orders WHERE client_order_id")]
    assert len(reads) == 2      # the intent vs the ack, then _record after the fill (was 5: also re-read after
    #                             writing it, for the crash test's mid-fill point and to return the status)


def test_applying_a_fill_reads_the_position_once(rig):
    seen = _traced(rig.store)
    rig.store.apply_fill(Fill("x1", "none", "ETH/USDT", Side.BUY, D("1"), D("10"), D("0"), rig.clock()))
    rig.store.conn.set_trace_callback(None)
    assert sum("FROM positions WHERE instrument" in s for s in seen) == 1
    assert rig.store.positions()["ETH/USDT"].qty == D("1")


def test_the_mid_fill_crash_point_is_armed_only_by_its_variable(monkeypatch):
    assert not faults.armed("mid_fill")
    monkeypatch.setattr(faults, "_crash_at", "mid_fill")
    assert faults.armed("mid_fill") and not faults.armed("after_ack")


def test_audit_records_keep_their_canonical_json_and_mac():
    """The encoders made once produce the bytes json.dumps did: old chains still verify."""
    import hashlib
    import hmac
    import json
    key = b"k" * 32
    payload = {"b": D("1.5"), "a": [1, "x"], "c": None}
    seq, ts, kind, text, prev, mac = audit.record((6, "ab" * 32), 12.5, "fill", payload, key)
    assert text == json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    body = (prev + json.dumps([7, repr(12.5), "fill", text], separators=(",", ":"))).encode()
    assert (seq, mac) == (7, hmac.new(key, body, hashlib.sha256).hexdigest())
