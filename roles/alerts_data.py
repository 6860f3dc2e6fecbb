"""The notifier's data: inventory keys, names on the host, and how the webhook URL is checked.

Shared by roles/alerts.py (what it installs), deploy/alert_key.py (the webhook's HMAC key from the
secrets environment) and tests/compliance/test_alerts.py (what must be in force), so no value is
written twice. Checked before any host is touched, every problem at once (deploy/inventory.py).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from roles.data import DataKey, is_bool, is_existing_file
from roles.secrets_data import SECRETS_ENV

#: The notifier's service user (no shell, no home): its uid is what its egress table matches.
ALERT_USER = "hardkit-alert"
#: The daemon, the OnFailure= hook of every hardkit-*.service (instance: the failed unit), and
#: the notifier's egress allow-list (loaded at boot, refreshed on a timer).
UNIT = "hardkit-alert.service"
HOOK_TEMPLATE = "hardkit-alert-failed@.service"
EGRESS_UNIT = "hardkit-alert-egress.service"
EGRESS_REFRESH_UNIT = "hardkit-alert-egress-refresh.service"
EGRESS_REFRESH_TIMER = "hardkit-alert-egress-refresh.timer"
#: The prefix drop-in every hardkit-*.service gets, and on the notifier's own units (a failing hook
#: must not start another hook) a drop-in of the same name, which replaces it: an empty OnFailure=
#: cannot, systemd does not reset a dependency list.
UNIT_DIR = "/etc/systemd/system"
ONFAILURE_DROPIN = f"{UNIT_DIR}/hardkit-.service.d/50-hardkit-alert.conf"
ONFAILURE = "hardkit-alert-failed@%n.service"
NO_ONFAILURE_UNITS = (UNIT, HOOK_TEMPLATE)
NO_ONFAILURE_DROPIN = "50-hardkit-alert.conf"
#: The program (roles/alert_notify.py) and where its state lives (StateDirectory=).
TOOL = "/usr/local/sbin/hardkit-alert"
STATE_NAME = "hardkit-alert"
STATE_DIR = f"/var/lib/{STATE_NAME}"
CA_FILE = "/etc/hardkit/alert-webhook-ca.pem"
#: fail2ban: the action that reports a ban, and the jail.d file adding it to hardkit's jails.
F2B_ACTION = "/etc/fail2ban/action.d/hardkit-alert.conf"
F2B_JAILS = "/etc/fail2ban/jail.d/hardkit-alert.local"
#: The egress table (the same kind as the bot's, roles/bot_egress.py) and its tool's files.
EGRESS_TABLE = "hardkit_alert"
EGRESS_CHAIN = "alert_egress"
EGRESS_COUNTER = "alert_egress_dropped"
EGRESS_LOG_PREFIX = "hardkit-alert-egress-drop: "
EGRESS_RULESET = "/etc/hardkit/alert-egress.nft"
EGRESS_CONFIG = "/etc/hardkit/alert-egress.json"
EGRESS_STATE_NAME = "hardkit-alert-egress"
#: The webhook's HMAC key: its name in the secrets environment (secrets/<env>/<name>.age), and the
#: systemd credential it becomes (/etc/credstore.encrypted/<CRED_PREFIX><credential>).
KEY_SECRET = "alert-webhook-key"
CRED_PREFIX = "hardkit-alert."
#: The most `systemd-analyze security` may score the notifier's units.
MAX_EXPOSURE = 2.0


def _check_url(v) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        return f"must be an https:// URL, not {v!r}"
    parts = urlsplit(v)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"must be an https:// URL, not {v!r}"
    try:
        parts.port
    except ValueError:
        return f"has a bad port: {v!r}"
    if parts.username or parts.password:
        return "must not carry a user or password (the HMAC key signs each request)"
    return None


def _positive(limit: int):
    def check(v) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit
        return None if ok else f"must be a whole number 1-{limit}, not {v!r}"
    return check


def _check_emails(v) -> str | None:
    if not isinstance(v, list) or not all(isinstance(a, str) and a.count("@") == 1 and " " not in a
                                          and not a.startswith("-") for a in v):
        return f"must be a list of email addresses, not {v!r}"
    return None


WEBHOOK_URL = DataKey(
    "alert_webhook_url", None,
    "Where alerts are POSTed (JSON, signed: X-Hardkit-Signature = sha256=HMAC-SHA256(key, '<timestamp>.<body>'), "
    "X-Hardkit-Timestamp). Must be https:// (http:// only with alert_webhook_allow_http for a private address). "
    f"Needs the key as secrets/<env>/{KEY_SECRET}.age. Its host:port joins the notifier's egress allow-list. "
    "Default None: no webhook (alerts still go to the journal, and to email if set).", _check_url)
ALLOW_HTTP = DataKey(
    "alert_webhook_allow_http", False,
    "Allow an http:// webhook URL, only to a private or loopback IP address (a lab receiver). Default false.",
    is_bool)
WEBHOOK_CA = DataKey(
    "alert_webhook_ca", None,
    "A PEM file on the controller: the CA that signs the webhook's certificate, trusted instead of the system's "
    "CAs (a private receiver). Default None: the system's CAs.",
    lambda v: None if v is None else is_existing_file(v))
EMAIL_TO = DataKey(
    "alert_email_to", [],
    "Email recipients, handed over SMTP to the host's MTA on localhost:25 when one listens there as the notifier "
    "starts (none: skipped, said once in the notifier's journal). Default []: no email.", _check_emails)
DEDUPE_SECONDS = DataKey(
    "alert_dedupe_seconds", 3600,
    "Repeats of one event (same kind and subject) within this window are counted, not sent; when it closes one "
    "alert carries the count. Default 3600 (one hour).", _positive(7 * 86400))
RATE_PER_HOUR = DataKey(
    "alert_rate_per_hour", 30,
    "At most this many alerts leave per hour (bursts of 10); the rest wait in the spool. Default 30.",
    _positive(3600))
REBOOT_PENDING_DAYS = DataKey(
    "alert_reboot_pending_days", 7,
    "Alert (once a day) when a reboot has been pending longer than this many days. Default 7: the reboot guard "
    "reboots within a day unless a holder keeps it back, so a week means something holds it.", _positive(365))
EGRESS_REFRESH_MINUTES = DataKey(
    "alert_egress_refresh_minutes", 15,
    "How often the webhook's host name is resolved again for the egress allow-list. Default 15.", _positive(1440))

KEYS = [WEBHOOK_URL, ALLOW_HTTP, WEBHOOK_CA, EMAIL_TO, DEDUPE_SECONDS, RATE_PER_HOUR, REBOOT_PENDING_DAYS,
        EGRESS_REFRESH_MINUTES]


def webhook_endpoint(url: str) -> str:
    """The URL's host:port as the egress tool writes endpoints ('[v6]:port' for IPv6)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_problems(data) -> list[str]:
    """The keys taken together: http only when allowed and private, a key in the secrets environment."""
    url = WEBHOOK_URL.value(data)
    if url is None:
        return []
    problems = []
    parts = urlsplit(url)
    if parts.scheme == "http":
        try:
            private = ipaddress.ip_address(parts.hostname).is_private
        except ValueError:
            private = False
        if not ALLOW_HTTP.value(data):
            problems.append(f"alert_webhook_url {url!r} is http://: use https://, or set alert_webhook_allow_http "
                            "for a private lab address")
        elif not private:
            problems.append(f"alert_webhook_url {url!r}: http:// is allowed only to a private IP address")
    port = int(webhook_endpoint(url).rpartition(":")[2])
    from roles.firewall import EGRESS_ALLOW, EGRESS_POLICY

    if port not in (80, 443) and EGRESS_POLICY.value(data) == "restricted" and \
            not any(r.get("port") == port and r.get("proto") == "tcp" for r in EGRESS_ALLOW.value(data)):
        problems.append(f"alert_webhook_url uses port {port}: the host firewall lets only 80 and 443 out; add an "
                        f"egress_allow rule for tcp port {port}")
    env = SECRETS_ENV.value(data)
    if env is None:
        problems.append(f"alert_webhook_url is set but secrets_env is not: the webhook's HMAC key must come from "
                        f"secrets/<env>/{KEY_SECRET}.age")
    else:
        from deploy.secrets_store import secrets_root

        if not (secrets_root() / env / f"{KEY_SECRET}.age").is_file():
            problems.append(f"alert_webhook_url is set but secrets environment {env!r} has no {KEY_SECRET}: add it "
                            f"with `hardkit secrets set {env} {KEY_SECRET}`")
    return problems


def ca_text(data) -> str | None:
    path = WEBHOOK_CA.value(data)
    return Path(path).expanduser().read_text() if path else None

# Key the runner adds to the data it hands pyinfra for one run (never set by operators): the
# notifier's credentials sent or removed on this host by this run; the role restarts the notifier.
KEY_CHANGED_KEY = "hardkit_alert_key_changed"
