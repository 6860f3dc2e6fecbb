"""The notifier (roles/alert_notify.py, installed as /usr/local/sbin/hardkit-alert) as a module.

Real parts: the bot's own StateMachine writes the state-change line the notifier parses; a real HTTPS
server on loopback (a throwaway CA made with openssl) receives the webhook and checks the signature
with its own HMAC; the spool is real files that a second Notifier (a restart) picks up.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading

import pytest

from roles import alert_notify as an


def config(tmp_path, **over):
    base = {"state_dir": str(tmp_path / "state"), "host": "vps1", "webhook_url": None, "webhook_ca": None,
            "email_to": [], "dedupe_seconds": 60, "rate_per_hour": 60, "reboot_pending_days": 7,
            "reboot_required_file": str(tmp_path / "reboot-required"), "bot_unit": "hardkit-bot.service"}
    return {**base, **over}


# --- event parsing ---------------------------------------------------------------------------------

def test_the_bots_own_state_change_line_becomes_a_bot_state_event(tmp_path, caplog):
    """The line is written by the bot's StateMachine with the bot's log format, as the journal holds it."""
    from hardkit_bot.model import TradingState
    from hardkit_bot.risk.state import StateMachine
    from hardkit_bot.store import Store

    store = Store(tmp_path / "ledger.sqlite", lambda: 1000.0)
    sm = StateMachine(store, lambda: 1000.0)
    fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")  # hardkit_bot.cli.main's format
    with caplog.at_level(logging.INFO, logger="hardkit_bot"):
        sm.escalate(TradingState.HALTED, "operator halt: drill")
    lines = [fmt.format(r) for r in caplog.records]
    events = [e for e in (an.bot_state_event({"MESSAGE": line, "__REALTIME_TIMESTAMP": "1700000000000000"})
                          for line in lines) if e]
    store.close()
    assert [(e["kind"], e["key"]) for e in events] == [("bot-state", "bot-state:HALTED")]
    assert "from ACTIVE" in events[0]["summary"] and "operator halt: drill" in events[0]["summary"]
    assert events[0]["at"] == 1700000000.0


def test_other_bot_lines_and_non_utf8_messages_are_no_events():
    assert an.bot_state_event({"MESSAGE": "INFO hardkit_bot.engine: iteration 5"}) is None
    assert an.bot_state_event({"MESSAGE": list(b"\xff\xfe not text")}) is None
    # going back down (a reset to ACTIVE) is not an alert
    assert an.bot_state_event({"MESSAGE": "WARNING hardkit_bot.risk.state: trading state HALTED -> ACTIVE: x"}) is None


@pytest.mark.parametrize("unit,kind", [
    ("hardkit-aide-check.service", "integrity"), ("hardkit-rkhunter.service", "rootkit"),
    ("hardkit-backup.service", "backup"), ("hardkit-backup-check.service", "backup-check"),
    ("hardkit-backup-stage.service", "backup"),
    ("hardkit-restic-check.service", "backup-check"), ("hardkit-bot.service", "unit-failed")])
def test_a_failed_units_kind_comes_from_its_name(unit, kind):
    event = an.unit_failed_event(unit, "exit-code", ["changed: /etc/passwd"])
    assert (event["kind"], event["key"], event["detail"]) == (kind, f"{kind}:{unit}", ["changed: /etc/passwd"])


def test_a_ban_event_names_jail_ip_and_failures():
    e = an.ban_event("sshd", "192.0.2.7", "3")
    assert (e["kind"], e["key"], e["summary"]) == ("ban", "ban:192.0.2.7", "fail2ban [sshd] banned 192.0.2.7 after 3 failures")


def test_a_reboot_pending_longer_than_the_limit_alerts_once_per_day(tmp_path):
    marker = tmp_path / "reboot-required"
    now = 2_000_000_000.0
    assert an.reboot_event(str(marker), 7, now) is None  # nothing pending
    marker.touch()
    os.utime(marker, (now - 6.5 * 86400, now - 6.5 * 86400))
    assert an.reboot_event(str(marker), 7, now) is None  # pending, not long enough
    os.utime(marker, (now - 8.2 * 86400, now - 8.2 * 86400))
    assert an.reboot_event(str(marker), 7, now)["key"] == "reboot-pending:8d"


# --- dedupe and rate ------------------------------------------------------------------------------

def test_repeats_within_the_window_make_one_alert_then_one_with_their_count():
    seen, e = {}, an.make_event("ban", "192.0.2.7", "banned")
    assert an.admit(seen, e, 100.0, 60)["count"] == 1
    assert [an.admit(seen, e, t, 60) for t in (110.0, 120.0, 130.0)] == [None, None, None]
    assert an.close_windows(seen, 150.0, 60) == []  # window still open
    [summary] = an.close_windows(seen, 161.0, 60)
    assert summary["count"] == 3 and "repeated 3 times" in summary["summary"]
    assert an.close_windows(seen, 300.0, 60) == [] and seen == {}  # a quiet window: forgotten
    assert an.admit(seen, e, 301.0, 60)["count"] == 1  # a new occurrence alerts at once again


def test_different_keys_are_not_merged():
    seen = {}
    alerts = [an.admit(seen, an.make_event("ban", ip, "banned"), 100.0, 60) for ip in ("192.0.2.1", "192.0.2.2")]
    assert all(a and a["count"] == 1 for a in alerts)


def test_the_bucket_lets_a_burst_through_then_paces():
    b = an.Bucket(per_hour=360, burst=3, now=0.0)  # one token per 10 s
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(5.0) is False and b.take(10.5) is True


# --- signing ---------------------------------------------------------------------------------------

def test_signature_is_hmac_sha256_over_timestamp_and_body_and_refuses_replay():
    key, body = b"k" * 32, b'{"kind":"ban"}'
    sig = an.sign(key, 1700000000, body)
    assert sig == "sha256=" + hmac.new(key, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert an.verify(key, "1700000000", body, sig, now=1700000100)
    assert not an.verify(key, "1700000000", body, sig, now=1700000000 + an.REPLAY_TOLERANCE_SECONDS + 1)
    assert not an.verify(key, "1700000000", body + b" ", sig, now=1700000000)
    assert not an.verify(b"other", "1700000000", body, sig, now=1700000000)


# --- spool, retry, delivery -------------------------------------------------------------------------

class Receiver:
    """HTTPS on loopback with a throwaway CA; answers 503 while `down`, records verified bodies."""

    def __init__(self, tmp_path, key: bytes):
        self.key, self.down, self.got, self.refused = key, True, [], 0
        cert, pkey = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(pkey), "-out", str(cert)], check=True, capture_output=True)
        self.ca = str(cert)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts, sig = self.headers.get(an.TIMESTAMP_HEADER, ""), self.headers.get(an.SIGNATURE_HEADER, "")
                good = hmac.compare_digest(
                    sig, "sha256=" + hmac.new(outer.key, ts.encode() + b"." + body, hashlib.sha256).hexdigest())
                if outer.down:
                    self.send_response(503)
                elif not good:
                    outer.refused += 1
                    self.send_response(401)
                else:
                    outer.got.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(pkey))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path, b"s" * 32)
    yield r
    r.close()


def test_a_failed_delivery_stays_in_the_spool_survives_a_restart_and_is_delivered_later(tmp_path, receiver, capsys):
    cfg = config(tmp_path, webhook_url=receiver.url, webhook_ca=receiver.ca)
    n = an.Notifier(cfg, receiver.key, None, now=0.0)
    n.handle([an.make_event("ban", "192.0.2.7", "fail2ban [sshd] banned 192.0.2.7")], now=1000.0)
    n.deliver(1000.0)  # receiver down: 503
    [(path, item)] = an.Spool(cfg["state_dir"]).due(10_000.0)
    assert item["attempts"] == 1 and item["next_at"] == 1000.0 + an.RETRY_BASE_SECONDS
    n.deliver(1001.0)  # not due yet: no attempt
    assert json.loads(open(path).read())["attempts"] == 1
    n.deliver(1005.0)
    assert json.loads(open(path).read())["attempts"] == 2  # backoff doubles: next in 10 s
    assert json.loads(open(path).read())["next_at"] == 1005.0 + 2 * an.RETRY_BASE_SECONDS
    receiver.down = False
    restarted = an.Notifier(cfg, receiver.key, None, now=2000.0)  # a new process: only the files remain
    restarted.deliver(2000.0)
    assert [(g["key"], g["count"], g["host"]) for g in receiver.got] == [("ban:192.0.2.7", 1, "vps1")]
    assert an.Spool(cfg["state_dir"]).due(10_000.0) == []
    out = capsys.readouterr().out
    assert "ALERT ban [ban:192.0.2.7] x1" in out and "webhook: delivered [ban:192.0.2.7]" in out


def test_a_wrong_key_is_refused_by_the_receiver_and_kept_for_retry(tmp_path, receiver):
    receiver.down = False
    cfg = config(tmp_path, webhook_url=receiver.url, webhook_ca=receiver.ca)
    n = an.Notifier(cfg, b"not the key", None, now=0.0)
    n.handle([an.make_event("ban", "192.0.2.9", "banned")], now=10.0)
    n.deliver(10.0)
    assert receiver.refused == 1 and receiver.got == []
    assert len(an.Spool(cfg["state_dir"]).due(10_000.0)) == 1


def test_the_dedupe_memory_survives_a_restart(tmp_path):
    cfg = config(tmp_path)
    e = an.make_event("unit-failed", "hardkit-x.service", "failed")
    an.Notifier(cfg, None, None, 0.0).handle([e], now=100.0)
    again = an.Notifier(cfg, None, None, 0.0)
    again.handle([e, e], now=110.0)
    assert again.state["seen"][e["key"]]["repeats"] == 2


def test_rate_limit_holds_alerts_back_in_the_spool_not_dropped(tmp_path, receiver):
    receiver.down = False
    cfg = config(tmp_path, webhook_url=receiver.url, webhook_ca=receiver.ca, rate_per_hour=2)
    n = an.Notifier(cfg, receiver.key, None, now=0.0)
    n.handle([an.make_event("ban", f"192.0.2.{i}", "banned") for i in range(4)], now=0.0)
    n.deliver(0.0)
    assert len(receiver.got) == 2 and len(an.Spool(cfg["state_dir"]).due(0.0)) == 2
    n.deliver(1800.0)  # one token back after half an hour
    assert len(receiver.got) == 3


def test_email_without_an_mta_is_said_once_and_skipped(tmp_path, capsys):
    n = an.Notifier(config(tmp_path, email_to=["ops@example.org"]), None, None, 0.0)
    n.handle([an.make_event("ban", "192.0.2.7", "banned")], now=1.0)
    assert n.channels == [] and an.Spool(n.config["state_dir"]).due(10.0) == []
    assert capsys.readouterr().out.count("no MTA listens on localhost:25") == 1


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to take one message (what an MTA on loopback does for the notifier)."""

    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        envelope, data = [], None
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if data is not None:
                if line == ".":
                    self.server.got.append((envelope, "\n".join(data)))
                    data = None
                    self.wfile.write(b"250 queued\r\n")
                else:
                    data.append(line[1:] if line.startswith("..") else line)
                continue
            verb = line.split(" ", 1)[0].upper()
            if verb == "DATA":
                data = []
                self.wfile.write(b"354 go on\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                if verb in ("MAIL", "RCPT"):
                    envelope.append(line)
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def mta():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.got = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_email_goes_to_the_mta_over_smtp(tmp_path, mta):
    address = an.mta_listening(mta.server_address)
    assert address == mta.server_address
    n = an.Notifier(config(tmp_path, email_to=["ops@example.org"]), None, address, 0.0)
    assert n.channels == ["email"]
    n.handle([an.make_event("integrity", "hardkit-aide-check.service", "aide found changes", ["/etc/passwd"])], 1.0)
    n.deliver(1.0)
    (envelope, mail), = mta.got
    assert [line.lower() for line in envelope] == [f"mail from:<hardkit-alert@{socket.gethostname()}>".lower(),
                                                  "rcpt to:<ops@example.org>"]
    assert "To: ops@example.org" in mail and "integrity: aide found changes" in mail and "/etc/passwd" in mail
    assert an.Spool(n.config["state_dir"]).due(10.0) == []


def test_an_mta_gone_at_delivery_keeps_the_alert_for_a_retry(tmp_path, mta, capsys):
    address = mta.server_address
    mta.shutdown()
    mta.server_close()
    assert an.mta_listening(address) is None
    n = an.Notifier(config(tmp_path, email_to=["ops@example.org"]), None, address, 0.0)
    n.handle([an.make_event("ban", "192.0.2.7", "banned")], now=1.0)
    n.deliver(1.0)
    assert "email: delivery of [ban:192.0.2.7] failed" in capsys.readouterr().out
    assert len(an.Spool(n.config["state_dir"]).due(10_000.0)) == 1


# --- the command line ---------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, an.__file__, *args], capture_output=True, text=True, timeout=60)


def test_check_config_lists_every_problem_in_one_line(tmp_path):
    bad = tmp_path / "alert.json"
    bad.write_text(json.dumps({**config(tmp_path), "state_dir": "relative", "rate_per_hour": 0, "extra": 1}))
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    for word in ("state_dir", "rate_per_hour", "'extra'"):
        assert word in res.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps(config(tmp_path)))
    assert run_cli("check-config", str(good)).returncode == 0


def test_ban_command_drops_an_event_in_the_inbox_that_the_daemon_takes(tmp_path):
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(config(tmp_path)))
    assert run_cli("--config", str(path), "ban", "sshd", "192.0.2.7", "3").returncode == 0
    [event] = an.Spool(config(tmp_path)["state_dir"]).take_events()
    assert event["key"] == "ban:192.0.2.7"
    assert an.Spool(config(tmp_path)["state_dir"]).take_events() == []


def test_unit_failed_refuses_a_unit_outside_hardkit(tmp_path):
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(config(tmp_path)))
    res = run_cli("--config", str(path), "unit-failed", "ssh.service")
    assert res.returncode == 2 and "not a hardkit-*.service" in res.stderr


def test_journal_reading_resumes_after_the_saved_cursor():
    assert "--after-cursor=s=abc" in an.journal_command("hardkit-bot.service", "s=abc", 5.0)
    assert "--since=@1700000000" in an.journal_command("hardkit-bot.service", None, 1700000000.7)
