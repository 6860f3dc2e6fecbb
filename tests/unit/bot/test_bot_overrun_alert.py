"""A loss overrun reaches the operator: the notifier (roles/alert_notify.py) alerts the line the bot's
engine writes when it closes a position whose loss outran its planned risk.

It used to alert only through the REDUCING state change the overrun latches: a bot already latched
REDUCING (by the operator or a breaker) writes no state-change line, so the close was only logged.
"""
import logging

from hardkit_bot.model import TradingState

from roles import alert_notify as an

from bot_helpers import Replay

#: hardkit_bot.cli.main's log format: the journal holds the bot's lines as this writes them.
BOT_FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")


def _alerts(records, tmp_path, monkeypatch) -> list[dict]:
    """What the notifier's journal reader (`read_journal`, as the daemon calls it) makes of these log
    records, the journal played by a `journalctl` on PATH that prints them as `journalctl -o json` does."""
    import json
    import os

    lines = tmp_path / "journal.json"
    lines.write_text("".join(json.dumps({"MESSAGE": BOT_FORMAT.format(r), "__REALTIME_TIMESTAMP": "1700000000000000",
                                         "__CURSOR": f"c{i}"}) + "\n" for i, r in enumerate(records)))
    fake = tmp_path / "bin" / "journalctl"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ncat {lines}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    events, _cursor = an.read_journal("hardkit-bot.service", None, 0.0)
    return events


def test_an_overrun_alerts_even_when_the_bot_is_already_reducing(tmp_path, clock, caplog, monkeypatch):
    rp = Replay(tmp_path, clock, extra_risk="vol_z_enter = 50\nvol_z_exit = 2")
    for _ in range(20):
        rp.bar()
    rp.buy()                                              # 9 @ 100, planned risk 45
    rp.eng.sm.escalate(TradingState.REDUCING, "operator: reduce only")   # alerted then, on its own
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hardkit_bot"):
        rp.bar(80.0)                                      # -20 % in one bar: far beyond the planned risk
    assert rp.qty == 0
    events = _alerts(caplog.records, tmp_path, monkeypatch)
    assert [e["key"] for e in events] == ["bot-overrun:BTC/USDT"], [e["summary"] for e in events]
    assert "exceeds its planned risk" in events[0]["summary"] and events[0]["at"] == 1700000000.0


def test_from_active_the_overrun_alerts_with_its_state_change(tmp_path, clock, caplog, monkeypatch):
    rp = Replay(tmp_path, clock, extra_risk="vol_z_enter = 50\nvol_z_exit = 2")
    for _ in range(20):
        rp.bar()
    rp.buy()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hardkit_bot"):
        rp.bar(80.0)
    assert sorted(e["key"] for e in _alerts(caplog.records, tmp_path, monkeypatch)) == ["bot-overrun:BTC/USDT", "bot-state:REDUCING"]


def test_an_ordinary_engine_line_is_no_alert():
    assert an.bot_event({"MESSAGE": "INFO hardkit_bot.engine: iteration 5"}) is None
    assert an.bot_event({"MESSAGE": "ERROR hardkit_bot.engine: risk overrun: nonsense"}) is None
