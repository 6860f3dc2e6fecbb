"""The audit log is append-only and hash-chained; `hardkit-bot audit verify` finds tampering and says where."""
import sqlite3

import pytest

from hardkit_bot import audit
from hardkit_bot.model import Fill, Side
from hardkit_bot.store import Store

from decimal import Decimal as D


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
