"""The audit log is append-only and hash-chained; `hardkit-bot audit verify` finds tampering and says where."""
import json
import os
import re
import sqlite3

import pytest

from hardkit_bot import audit
from hardkit_bot.model import Fill, Side
from hardkit_bot.store import Store

from decimal import Decimal as D

from bot_helpers import config_text


def build(path, clock):
    s = Store(path, clock)
    for n in range(5):
        s.apply_fill(Fill(f"t{n}", "hk1-1", "BTC/USDT", Side.BUY, D("0.1"), D("100"), D("0.01"), 0.0))
    s.set_meta("x", 1, audit_kind="note")
    s.close()


def test_clean_log_verifies_and_updates_are_refused(tmp_path, clock, bot):
    build(bot.state.mkdir(parents=True) or bot.state / "ledger.sqlite", clock)
    r = bot.cli("audit", "verify")
    assert r.returncode == 0 and "audit log OK: 6 records" in r.stdout
    c = sqlite3.connect(bot.state / "ledger.sqlite")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        c.execute("UPDATE audit SET payload = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        c.execute("DELETE FROM audit WHERE seq = 2")


@pytest.mark.parametrize("tamper,where", [
    ("UPDATE audit SET payload = replace(payload, '\"qty\":\"0.1\"', '\"qty\":\"9.9\"') WHERE seq = 3", "record 3"),
    ("DELETE FROM audit WHERE seq = 2", "expected 2"),
    ("UPDATE audit SET hash = 'x' || substr(hash, 2) WHERE seq = 4", "record 4"),
])
def test_tampering_is_detected_and_located(bot, clock, tamper, where):
    bot.state.mkdir(parents=True)
    build(bot.state / "ledger.sqlite", clock)
    c = sqlite3.connect(bot.state / "ledger.sqlite")
    c.execute("DROP TRIGGER audit_no_update")     # a tamperer going around SQLite's own rules
    c.execute("DROP TRIGGER audit_no_delete")
    c.execute(tamper)
    c.commit()
    c.close()
    r = bot.cli("audit", "verify")
    assert r.returncode == 1
    assert "TAMPERED" in r.stderr and where in r.stderr, r.stderr


def test_every_risk_decision_is_in_the_ledger_and_the_chain(tmp_path, clock):
    from hardkit_bot.model import Intent
    from hardkit_bot.risk.pipeline import Denial, DenialCode
    s = Store(tmp_path / "l.sqlite", clock)
    i = Intent("k", "BTC/USDT", Side.BUY, D("1"), D("100"))
    s.record_decision(i, Denial(DenialCode.ORDER_RATE, {"limit": "5"}))
    s.record_decision(i, None)
    rows = s.decisions()
    assert [(r["approved"], r["code"]) for r in rows] == [(0, "ORDER_RATE"), (1, None)]
    kinds = [r[0] for r in s.conn.execute("SELECT kind FROM audit")]
    assert kinds == ["risk_decision", "risk_decision"]
    assert audit.verify(s.conn).ok


# ---- keyed chain ------------------------------------------------------------------------------

@pytest.fixture
def key_file(tmp_path):
    p = tmp_path / "audit-key"
    p.write_bytes(os.urandom(32))
    p.chmod(0o600)
    return p


def rewrite_from(path, seq, edit, drop_key_id=False):
    """What a tamperer without the key can do: drop the triggers, edit, rehash the rest (SHA-256)."""
    c = sqlite3.connect(path)
    c.execute("DROP TRIGGER audit_no_update")
    c.execute(edit)
    if drop_key_id:
        c.execute("DELETE FROM meta WHERE key = 'audit_key_id'")
    prev = c.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 1,)).fetchone()[0]
    for s, ts, kind, payload in c.execute("SELECT seq, ts, kind, payload FROM audit WHERE seq >= ? ORDER BY seq",
                                          (seq,)).fetchall():
        h = audit.record_hash(prev, s, ts, kind, payload)
        c.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, s))
        prev = h
    c.commit()
    c.close()


@pytest.mark.parametrize("drop_key_id", [False, True])
def test_a_rehashed_rewrite_fails_verify_with_the_key(bot, clock, key_file, drop_key_id):
    bot.state.mkdir(parents=True)
    ledger = bot.state / "ledger.sqlite"
    s = Store(ledger, clock, key_file.read_bytes())
    for n in range(5):
        s.apply_fill(Fill(f"t{n}", "hk1-1", "BTC/USDT", Side.BUY, D("0.1"), D("100"), D("0.01"), 0.0))
    s.close()
    r = bot.cli("audit", "verify", "--audit-key-file", str(key_file))
    assert r.returncode == 0 and "audit log OK: 5 records" in r.stdout and "keyed" in r.stdout, r.stderr
    rewrite_from(ledger, 3, "UPDATE audit SET payload = replace(payload, '\"qty\":\"0.1\"', '\"qty\":\"9.9\"') WHERE seq = 3",
                 drop_key_id)
    r = bot.cli("audit", "verify", "--audit-key-file", str(key_file))
    assert r.returncode == 1 and "TAMPERED" in r.stderr, r.stdout + r.stderr
    assert ("not keyed" in r.stderr) if drop_key_id else ("record 3" in r.stderr and "MAC" in r.stderr)


def test_a_keyed_ledger_refuses_writers_without_its_key(bot, clock, key_file, tmp_path):
    bot.state.mkdir(parents=True)
    Store(bot.state / "ledger.sqlite", clock, key_file.read_bytes()).close()
    bot.write_config(config_text())
    for args in (["halt"], ["audit", "verify"]):
        r = bot.cli(*args)
        assert r.returncode == 2 and "keyed" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    other = tmp_path / "other-key"
    other.write_bytes(os.urandom(32))
    r = bot.cli("halt", "--audit-key-file", str(other))
    assert r.returncode == 2 and "does not fit" in r.stderr
    short = tmp_path / "short-key"
    short.write_bytes(b"0123")
    r = bot.cli("audit", "verify", "--audit-key-file", str(short))
    assert r.returncode == 2 and "at least 32" in r.stderr


def test_the_running_bot_keys_its_chain_from_credentials_and_anchors_the_head_in_its_log(bot, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "audit-key").write_bytes(os.urandom(32))
    bot.write_config(config_text())
    p = bot.start(env={"CREDENTIALS_DIRECTORY": str(creds)}, max_steps=20)
    assert p.wait(60) == 0, bot.logs()[-2000:]
    anchors = re.findall(r"audit head: seq (\d+) mac ([0-9a-f]{64})", bot.logs())
    assert len(anchors) >= 2                                     # at start and at stop (and every minute)
    r = bot.cli("audit", "verify", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 0, r.stderr
    assert f"{anchors[-1][0]} records, head {anchors[-1][1]}" in r.stdout   # the last anchor is the head
    assert "no audit key" not in bot.logs()


@pytest.mark.parametrize("kind, payload", [
    ("fill", {"qty": "0.01", "price": "30123.45", "note": None, "ok": True, "n": 3, "x": 1.5}),
    ("reset", {"note": 'quote " backslash \\ tab \t newline \n nul \x00 é € 😀', "meta": {"b": [1, None], "a": "z"}}),
    ("kïnd \"odd\"", {}),
])
def test_the_hashed_body_is_byte_for_byte_what_a_json_encoder_writes(kind, payload):
    """audit._body writes the record's hashed text directly: existing chains verify only if it is the
    same text a JSONEncoder(separators=(",", ":")) writes for [seq, repr(ts), kind, payload]."""
    text = audit._PAYLOAD(payload)
    for seq, ts in ((1, 1_800_000_000.123), (123456789, 0.1), (7, 1e-7)):
        expected = json.JSONEncoder(separators=(",", ":")).encode([seq, repr(ts), kind, text])
        assert audit._body(seq, ts, kind, text) == expected
