#!/usr/bin/python3
# Managed by hardkit (roles/alerts.py).
"""hardkit-alert: one notifier on the host for security and risk events.

Installed by roles/alerts.py as /usr/local/sbin/hardkit-alert; standard library only (the VPS has
python3, not hardkit's dependencies). Its settings come from a JSON config the deploy writes
(CONFIG_FILE, keys in CONFIG_KEYS).

    hardkit-alert run                     the daemon (hardkit-alert.service): reads the bot's journal
                                          after a saved cursor, takes events from its inbox, checks a pending
                                          reboot, delivers alerts from its spool
    hardkit-alert unit-failed UNIT        the OnFailure= hook of every hardkit-*.service: an event with
                                          the unit, its kind and the tail of its journal, into the inbox
    hardkit-alert ban JAIL IP [FAILURES]  fail2ban's action: a ban event into the inbox
    hardkit-alert check-config PATH       exit 2 with a one-line error if the config is invalid

Why an inbox: the producers (a failing unit's hook, fail2ban) only write one small file and return,
so a slow or dead webhook never holds them up; the daemon alone talks to the network.

Every event has a key (kind + subject). The first event of a key is alerted at once; repeats within
`dedupe_seconds` are counted, and when the window closes one alert says how many there were. At most
`rate_per_hour` alerts leave per hour (a burst of RATE_BURST); the rest wait in the spool. A failed
delivery stays in the spool (one file per alert and channel, which survives a restart) and is tried
again with exponential backoff (RETRY_BASE_SECONDS doubling up to RETRY_MAX_SECONDS).

Channels: the journal always (this program's stdout); the webhook when configured (JSON POST signed
with HMAC-SHA256 over "<timestamp>.<body>" in SIGNATURE_HEADER, the timestamp in TIMESTAMP_HEADER so a
receiver refuses replays; the key is the systemd credential KEY_CREDENTIAL); email over SMTP to the
host's MTA on MTA_ADDRESS when recipients are configured and an MTA listens there when the notifier
starts (none: said once, skipped). Not `sendmail`: under this program's sandbox (NoNewPrivileges, a
read-only system) a setuid or setgid sendmail cannot write the MTA's spool.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from email.message import EmailMessage

#: Where the deploy writes this tool's config.
CONFIG_FILE = "/etc/hardkit/alert.json"
#: The config's keys (all required; None where a channel is off):
#:   state_dir: absolute path of the inbox, spool and state; host: the name alerts carry;
#:   webhook_url / webhook_ca: where to POST, and an extra CA file to trust (None: the system's);
#:   email_to: recipient addresses ([] = no email); dedupe_seconds, rate_per_hour: see above;
#:   reboot_pending_days: alert when a reboot is pending longer; reboot_required_file: its marker;
#:   bot_unit: the unit whose journal carries the bot's state changes.
CONFIG_KEYS = ("state_dir", "host", "webhook_url", "webhook_ca", "email_to", "dedupe_seconds", "rate_per_hour",
               "reboot_pending_days", "reboot_required_file", "bot_unit")
#: The systemd credential holding the webhook's HMAC key ($CREDENTIALS_DIRECTORY/<name>).
KEY_CREDENTIAL = "webhook-key"
SIGNATURE_HEADER = "X-Hardkit-Signature"
TIMESTAMP_HEADER = "X-Hardkit-Timestamp"
#: How far a receiver should let a timestamp be from its clock (seconds) before it calls it a replay.
REPLAY_TOLERANCE_SECONDS = 300
RATE_BURST = 10
RETRY_BASE_SECONDS = 5
RETRY_MAX_SECONDS = 900
WEBHOOK_TIMEOUT_SECONDS = 10
#: How often the daemon looks at the pending reboot marker.
REBOOT_CHECK_SECONDS = 600
#: Journal lines of a failed unit an alert carries.
TAIL_LINES = 15

#: Alert kind of a failed unit, by the start of its name (first match); any other hardkit unit: unit-failed.
UNIT_KINDS = (
    ("hardkit-aide", "integrity"),
    ("hardkit-rkhunter", "rootkit"),
    ("hardkit-backup-check", "backup-check"),
    ("hardkit-restic-check", "backup-check"),
    ("hardkit-backup", "backup"),
)
#: The bot's state-change line (hardkit_bot.risk.state, written to its journal): from -> to: reason.
BOT_STATE_RE = re.compile(r"hardkit_bot\.risk\.state: trading state (\w+) -> (REDUCING|HALTED|KILLED): (.*)")
#: The bot's loss-overrun line (hardkit_bot.engine, once per position): a position lost more than its
#: planned risk by the margin and is being closed. It alerts on its own: when the bot is already
#: latched REDUCING or worse (by the operator or a breaker), no state-change line follows it.
BOT_OVERRUN_RE = re.compile(r"hardkit_bot\.engine: risk overrun: loss on (\S+) (.*); closing the position")
UNIT_RE = re.compile(r"^hardkit-[A-Za-z0-9:_.@-]+\.service$")


class ConfigError(ValueError):
    """The config is missing or malformed (said in one line, exit 2)."""


def log(message: str) -> None:
    print(message, flush=True)


# --- config ---------------------------------------------------------------------------------------

def _is_int(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def read_config(path: str) -> dict:
    """The config as a dict; every problem listed in one ConfigError."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read a JSON object: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    problems = [f"missing key {k!r}" for k in CONFIG_KEYS if k not in config]
    problems += [f"unknown key {k!r}" for k in sorted(set(config) - set(CONFIG_KEYS))]
    for k in ("state_dir", "reboot_required_file"):
        if k in config and not (isinstance(config[k], str) and config[k].startswith("/")):
            problems.append(f"{k} must be an absolute path")
    if config.get("webhook_ca") is not None and not str(config["webhook_ca"]).startswith("/"):
        problems.append("webhook_ca must be an absolute path or null")
    url = config.get("webhook_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        problems.append("webhook_url must be an http(s) URL or null")
    if "email_to" in config and not (isinstance(config["email_to"], list)
                                     and all(isinstance(a, str) and "@" in a for a in config["email_to"])):
        problems.append("email_to must be a list of addresses")
    for k, low in (("dedupe_seconds", 1), ("rate_per_hour", 1), ("reboot_pending_days", 1)):
        if k in config and not _is_int(config[k], low):
            problems.append(f"{k} must be a whole number >= {low}")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


# --- events ---------------------------------------------------------------------------------------

def now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def make_event(kind: str, subject: str, summary: str, detail: list[str] | None = None,
               at: float | None = None) -> dict:
    """An event: its key (kind:subject) decides deduplication."""
    return {"kind": kind, "key": f"{kind}:{subject}", "summary": summary, "detail": list(detail or []),
            "at": at if at is not None else time.time()}


def unit_kind(unit: str) -> str:
    """integrity, rootkit, backup-check, backup or unit-failed, from the unit's name."""
    for prefix, kind in UNIT_KINDS:
        if unit.startswith(prefix):
            return kind
    return "unit-failed"


def unit_failed_event(unit: str, result: str, tail: list[str]) -> dict:
    return make_event(unit_kind(unit), unit, f"{unit} failed ({result or 'unknown result'})", tail)


def ban_event(jail: str, ip: str, failures: str = "") -> dict:
    after = f" after {failures} failures" if failures.isdigit() else ""
    return make_event("ban", ip, f"fail2ban [{jail}] banned {ip}{after}")


def _message_and_time(entry: dict) -> tuple[str, float | None]:
    message = entry.get("MESSAGE")
    if isinstance(message, list):  # journalctl's form of a message that is not UTF-8
        message = bytes(message).decode(errors="replace")
    at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6 if str(entry.get("__REALTIME_TIMESTAMP", "")).isdigit() else None
    return message or "", at


def bot_state_event(entry: dict) -> dict | None:
    """The event of one journal entry (journalctl -o json) of the bot, if it is a state change up."""
    message, at = _message_and_time(entry)
    m = BOT_STATE_RE.search(message)
    if not m:
        return None
    return make_event("bot-state", m.group(2), f"bot entered {m.group(2)} (from {m.group(1)}): {m.group(3)}",
                      at=at)


def bot_overrun_event(entry: dict) -> dict | None:
    """The event of one journal entry of the bot, if it says a position's loss outran its planned risk."""
    message, at = _message_and_time(entry)
    m = BOT_OVERRUN_RE.search(message)
    if not m:
        return None
    return make_event("bot-overrun", m.group(1), f"bot closing {m.group(1)}: loss {m.group(2)}", at=at)


def bot_event(entry: dict) -> dict | None:
    """The alert one journal entry of the bot makes, if any."""
    return bot_state_event(entry) or bot_overrun_event(entry)


def reboot_event(required_file: str, days: int, now: float) -> dict | None:
    """An event when `required_file` is older than `days` days (one key per whole day pending)."""
    try:
        since = os.stat(required_file).st_mtime
    except OSError:
        return None
    pending = int((now - since) // 86400)
    if pending < days:
        return None
    return make_event("reboot-pending", f"{pending}d",
                      f"a reboot has been pending for {pending} days (since {now_iso(since)})", at=now)


# --- deduplication and rate ------------------------------------------------------------------------

def admit(seen: dict, event: dict, now: float, window: int) -> dict | None:
    """The alert for a new event, or None when its key already alerted within the window (counted)."""
    rec = seen.get(event["key"])
    if rec is not None and now < rec["window_end"]:
        rec["repeats"] += 1
        return None
    seen[event["key"]] = {"window_end": now + window, "repeats": 0, "event": event}
    return {**event, "count": 1}


def close_windows(seen: dict, now: float, window: int) -> list[dict]:
    """One alert per key whose window has closed with repeats in it (with their count); a key
    without repeats is forgotten, one with repeats opens a new window (a storm: one alert a window)."""
    alerts = []
    for key, rec in sorted(seen.items()):
        if now < rec["window_end"]:
            continue
        if rec["repeats"]:
            event = rec["event"]
            alerts.append({**event, "at": now, "count": rec["repeats"],
                           "summary": f"{event['summary']} (repeated {rec['repeats']} times within {window} s)"})
            seen[key] = {"window_end": now + window, "repeats": 0, "event": event}
        else:
            del seen[key]
    return alerts


class Bucket:
    """A token bucket: `per_hour` tokens an hour, at most `burst` saved up."""

    def __init__(self, per_hour: int, burst: int = RATE_BURST, now: float = 0.0):
        self.rate, self.burst = per_hour / 3600.0, min(burst, per_hour)
        self.tokens, self.at = float(self.burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# --- signing ---------------------------------------------------------------------------------------

def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value: sha256=HEX of HMAC-SHA256(key, "<timestamp>." + body)."""
    return "sha256=" + hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(key: bytes, timestamp: str, body: bytes, signature: str, now: float,
           tolerance: int = REPLAY_TOLERANCE_SECONDS) -> bool:
    """What a receiver checks: a fresh timestamp and a matching signature."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(key, int(timestamp), body), signature)


# --- the spool ------------------------------------------------------------------------------------

class Spool:
    """Files under state_dir: inbox/ (events from producers), outbox/ (alert x channel to deliver)."""

    def __init__(self, state_dir: str):
        self.inbox, self.outbox = os.path.join(state_dir, "inbox"), os.path.join(state_dir, "outbox")
        self.state_file = os.path.join(state_dir, "state.json")

    @staticmethod
    def _write(folder: str, name: str, data: dict) -> str:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        tmp = os.path.join(folder, "." + name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
        return path

    def put_event(self, event: dict) -> str:
        """One event file, readable by the notifier whoever writes it (fail2ban runs as root)."""
        path = self._write(self.inbox, f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json", event)
        os.chmod(path, 0o644)
        return path

    def create(self) -> None:
        """The folders, made by the notifier's own user before any producer (root) could make them."""
        for folder in (self.inbox, self.outbox):
            os.makedirs(folder, exist_ok=True)

    def take_events(self) -> list[dict]:
        """Every event waiting in the inbox, oldest first, removed as read (a broken one is logged)."""
        events = []
        for name in sorted(_listdir(self.inbox)):
            if name.startswith("."):
                continue
            path = os.path.join(self.inbox, name)
            try:
                with open(path) as f:
                    event = json.load(f)
                if not isinstance(event, dict) or not {"kind", "key", "summary"} <= set(event):
                    raise ValueError("not an event")
                events.append(event)
            except (OSError, ValueError) as e:
                log(f"inbox: dropping unreadable {name}: {e}")
            _unlink(path)
        return events

    def queue(self, alert: dict, channels: list[str], now: float) -> None:
        for channel in channels:
            self._write(self.outbox, f"{time.time_ns()}-{channel}.json",
                        {"alert": alert, "channel": channel, "attempts": 0, "next_at": now})

    def due(self, now: float) -> list[tuple[str, dict]]:
        """(path, item) of every delivery whose time has come, oldest first."""
        items = []
        for name in sorted(_listdir(self.outbox)):
            if name.startswith("."):
                continue
            path = os.path.join(self.outbox, name)
            try:
                with open(path) as f:
                    item = json.load(f)
            except (OSError, ValueError) as e:
                log(f"outbox: dropping unreadable {name}: {e}")
                _unlink(path)
                continue
            if item.get("next_at", 0) <= now:
                items.append((path, item))
        return items

    def retry_later(self, path: str, item: dict, now: float) -> float:
        item["attempts"] += 1
        delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (item["attempts"] - 1))
        item["next_at"] = now + delay
        self._write(os.path.dirname(path), os.path.basename(path), item)
        return delay

    def load_state(self) -> dict:
        try:
            with open(self.state_file) as f:
                state = json.load(f)
            if isinstance(state, dict):
                return {"cursor": state.get("cursor"), "seen": dict(state.get("seen") or {})}
        except (OSError, ValueError):
            pass
        return {"cursor": None, "seen": {}}

    def save_state(self, state: dict) -> None:
        self._write(os.path.dirname(self.state_file), os.path.basename(self.state_file), state)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- channels --------------------------------------------------------------------------------------

def payload(alert: dict, host: str) -> bytes:
    """The webhook's JSON body (and the email's text source)."""
    return json.dumps({"host": host, "kind": alert["kind"], "key": alert["key"], "summary": alert["summary"],
                       "detail": alert.get("detail", []), "count": alert.get("count", 1),
                       "at": now_iso(alert["at"])}, sort_keys=True).encode()


def post_webhook(url: str, key: bytes, body: bytes, context: ssl.SSLContext | None, now: float) -> None:
    """POST the body, signed; raises OSError (urllib's errors are OSErrors) unless the answer is 2xx."""
    ts = int(now)
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "hardkit-alert",
        TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(key, ts, body)})
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS, context=context) as answer:
        if not 200 <= answer.status < 300:
            raise OSError(f"HTTP {answer.status}")


#: Where the host's MTA takes mail: Debian's exim4 and postfix listen on loopback port 25 by default
#: (the notifier's egress table lets its uid reach loopback, and nothing else but DNS and the webhook).
MTA_ADDRESS = ("localhost", 25)


def mta_listening(address: tuple[str, int] = MTA_ADDRESS, timeout: float = 5.0) -> tuple[str, int] | None:
    """The MTA's address if something accepts connections there now, else None."""
    try:
        socket.create_connection(address, timeout=timeout).close()
    except OSError:
        return None
    return address


def email_message(recipients: list[str], host: str, alert: dict) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"hardkit-alert@{socket.gethostname()}"
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = f"[hardkit {host}] {alert['kind']}: {alert['summary']}"[:200]
    msg.set_content("\n".join([alert["summary"], "", *alert.get("detail", []), "",
                                f"count: {alert.get('count', 1)}", f"key: {alert['key']}"]) + "\n")
    return msg


def send_email(mta: tuple[str, int], recipients: list[str], host: str, alert: dict) -> None:
    """Hand the alert to the MTA (SMTP, no auth: loopback); an SMTP refusal raises (an OSError)."""
    with smtplib.SMTP(*mta, timeout=60) as smtp:
        smtp.send_message(email_message(recipients, host, alert))


# --- the daemon -----------------------------------------------------------------------------------

class Notifier:
    def __init__(self, config: dict, key: bytes | None, mta: tuple[str, int] | None, now: float):
        self.config, self.key, self.mta = config, key, mta
        self.spool = Spool(config["state_dir"])
        self.spool.create()
        self.state = self.spool.load_state()
        self.bucket = Bucket(config["rate_per_hour"], now=now)
        self.channels = (["webhook"] if config["webhook_url"] else []) + \
                        (["email"] if config["email_to"] and mta else [])
        self.context = ssl.create_default_context(cafile=config["webhook_ca"]) if config["webhook_url"] else None
        if config["email_to"] and not mta:
            log(f"email: no MTA listens on {MTA_ADDRESS[0]}:{MTA_ADDRESS[1]} on this host: email alerts are skipped")
        if config["webhook_url"] and key is None:
            log(f"webhook: no {KEY_CREDENTIAL} credential: webhook alerts wait in the spool, unsigned ones are "
                "never sent")

    def handle(self, events: list[dict], now: float) -> None:
        """Deduplicate, write to the journal, and queue for the other channels."""
        window = self.config["dedupe_seconds"]
        alerts = [a for a in (admit(self.state["seen"], e, now, window) for e in events) if a]
        alerts += close_windows(self.state["seen"], now, window)
        for alert in alerts:
            log(f"ALERT {alert['kind']} [{alert['key']}] x{alert['count']}: {alert['summary']}")
            for line in alert.get("detail", [])[-TAIL_LINES:]:
                log(f"  | {line}")
            self.spool.queue(alert, self.channels, now)
        if events or alerts:
            self.spool.save_state(self.state)

    def deliver(self, now: float) -> None:
        for path, item in self.spool.due(now):
            if not self.bucket.take(now):
                return  # rate-limited: the rest stays queued
            try:
                self._send(item, now)
            except (OSError, ssl.SSLError, subprocess.SubprocessError, ValueError) as e:
                delay = self.spool.retry_later(path, item, now)
                log(f"{item['channel']}: delivery of [{item['alert']['key']}] failed ({e}); "
                    f"attempt {item['attempts']}, next in {delay:.0f} s")
                continue
            _unlink(path)
            log(f"{item['channel']}: delivered [{item['alert']['key']}] x{item['alert'].get('count', 1)}")

    def _send(self, item: dict, now: float) -> None:
        alert, host = item["alert"], self.config["host"]
        if item["channel"] == "webhook":
            if self.key is None:
                raise ValueError(f"no {KEY_CREDENTIAL} credential")
            post_webhook(self.config["webhook_url"], self.key, payload(alert, host), self.context, now)
        elif item["channel"] == "email":
            if not self.mta:
                raise ValueError("no MTA")
            send_email(self.mta, self.config["email_to"], host, alert)


def journal_command(unit: str, cursor: str | None, since: float) -> list[str]:
    """The bot unit's journal after the saved cursor (first start: since the notifier started).

    Polled, not `--follow`: following needs an inotify instance, and a host short of them (many
    containers on one kernel) makes journalctl give up following without an error."""
    start = [f"--after-cursor={cursor}"] if cursor else [f"--since=@{int(since)}"]
    return ["journalctl", "--output=json", "--no-pager", *start, f"_SYSTEMD_UNIT={unit}"]


def read_journal(unit: str, cursor: str | None, since: float) -> tuple[list[dict], str | None]:
    """(events, new cursor) from the bot's journal entries since the last call."""
    res = subprocess.run(journal_command(unit, cursor, since), capture_output=True, timeout=60)
    events = []
    for line in res.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event = bot_event(entry)
        if event:
            events.append(event)
        cursor = entry.get("__CURSOR", cursor)
    return events, cursor


def read_key() -> bytes | None:
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    try:
        with open(os.path.join(folder, KEY_CREDENTIAL), "rb") as f:
            return f.read().strip() or None
    except OSError:
        return None


def run(config: dict, poll: float = 2.0) -> int:
    started = time.time()
    notifier = Notifier(config, read_key(), mta_listening() if config["email_to"] else None, started)
    next_reboot_check = 0.0
    log(f"hardkit-alert: running; channels: journal{''.join(', ' + c for c in notifier.channels)}")
    while True:
        cursor = notifier.state["cursor"]
        try:
            events, notifier.state["cursor"] = read_journal(config["bot_unit"], cursor, started)
        except (OSError, subprocess.SubprocessError) as e:
            log(f"journal: cannot read the bot's journal ({e}); trying again")
            events = []
        now = time.time()
        events += notifier.spool.take_events()
        if now >= next_reboot_check:
            next_reboot_check = now + REBOOT_CHECK_SECONDS
            event = reboot_event(config["reboot_required_file"], config["reboot_pending_days"], now)
            if event:
                events.append(event)
        notifier.handle(events, now)
        if notifier.state["cursor"] != cursor:
            notifier.spool.save_state(notifier.state)
        notifier.deliver(now)
        time.sleep(poll)


# --- producers --------------------------------------------------------------------------------------

def unit_tail(unit: str, lines: int = TAIL_LINES, tries: int = 5) -> tuple[str, list[str]]:
    """(result, last journal lines of the unit's last run). journald may not have stored the unit's
    last output yet when the hook starts, and a process that is gone before journald looks it up
    has no invocation id: an empty tail is read again (tries, a second apart), then the unit's last
    lines whatever their run (`journalctl -u`)."""
    out = subprocess.run(["systemctl", "show", "--property=Result", "--property=InvocationID", unit],
                         capture_output=True, text=True, timeout=30).stdout
    show = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    invocation = show.get("InvocationID", "")
    matches = ([[f"_SYSTEMD_INVOCATION_ID={invocation}"]] * tries if re.fullmatch(r"[0-9a-f]{32}", invocation)
               else []) + [["--unit", unit]]
    tail: list[str] = []
    for i, match in enumerate(matches):
        tail = subprocess.run(["journalctl", "--no-pager", "--output=cat", f"--lines={lines}", *match],
                              capture_output=True, text=True, timeout=30).stdout.splitlines()[-lines:]
        if tail:
            break
        if i < len(matches) - 1:
            time.sleep(1)
    return show.get("Result", ""), tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hardkit-alert", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=CONFIG_FILE, help=f"the notifier's config (default {CONFIG_FILE})")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-config").add_argument("path")
    sub.add_parser("run")
    u = sub.add_parser("unit-failed")
    u.add_argument("unit")
    b = sub.add_parser("ban")
    b.add_argument("jail")
    b.add_argument("ip")
    b.add_argument("failures", nargs="?", default="")
    args = p.parse_args(argv)
    try:
        config = read_config(args.path if args.cmd == "check-config" else args.config)
    except ConfigError as e:
        print(f"hardkit-alert: {e}", file=sys.stderr)
        return 2
    if args.cmd == "check-config":
        return 0
    if args.cmd == "run":
        return run(config)
    spool = Spool(config["state_dir"])
    if args.cmd == "unit-failed":
        if not UNIT_RE.match(args.unit):
            print(f"hardkit-alert: {args.unit!r} is not a hardkit-*.service unit", file=sys.stderr)
            return 2
        result, tail = unit_tail(args.unit)
        spool.put_event(unit_failed_event(args.unit, result, tail))
    else:
        spool.put_event(ban_event(args.jail, args.ip, args.failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
