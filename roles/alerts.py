"""Alerts: one notifier on the host for security and risk events (issue 12).

What it installs (names and defaults in roles/alerts_data.py):
- the program roles/alert_notify.py as /usr/local/sbin/hardkit-alert, its JSON config, its user;
- hardkit-alert.service (the daemon, sandboxed, exposure <= MAX_EXPOSURE), reading the webhook's
  HMAC key as an encrypted credential (delivered by deploy/alert_key.py before pyinfra runs);
- the prefix drop-in hardkit-.service.d/ with OnFailure=hardkit-alert-failed@%n.service, so every
  hardkit-*.service that fails (AIDE, rkhunter, backups, the bot...) alerts with its journal's
  tail, and drop-ins that clear it on the notifier's own units (no alert loops);
- a fail2ban action on hardkit's jails (roles/fail2ban.py) reporting each ban;
- the notifier's egress allow-list: a table like the bot's (roles/bot_egress.py, the same tool and
  template) matching the notifier's uid and allowing only the webhook's host:port and DNS.

Usage: ``roles.alerts.apply()`` after roles.fail2ban, roles.bot_egress (its tool) and roles.updates.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from roles import alert_notify, bot_egress, reboot_guard
from roles import alerts_data as d
from roles.admin import service_account
from roles.bot import SANDBOX as BOT_SANDBOX
from roles.bot_paths import CREDSTORE, UNIT as BOT_UNIT
from roles.fail2ban import JAILS
from roles.ops import install_file, render
from roles.updates import UNIT_CHECK

KEYS: list = []  # the keys live in roles/alerts_data.py

TOOL_SOURCE = Path(alert_notify.__file__)
KEY_FILE = f"{CREDSTORE}/{d.CRED_PREFIX}{alert_notify.KEY_CREDENTIAL}"
#: The daemon: the bot's sandbox (shared, not copied) but for ProcSubset=pid, which hides
#: /proc/sys/kernel/random/boot_id: journalctl cannot follow the journal without it.
SANDBOX = [(k, v) for k, v in BOT_SANDBOX if k != "ProcSubset"]
#: The hook: the same, with no network at all (it only reads the journal and writes a file).
HOOK_SANDBOX = [(k, v) for k, v in SANDBOX if k != "RestrictAddressFamilies"] + [
    ("RestrictAddressFamilies", "AF_UNIX"), ("PrivateNetwork", "yes"), ("IPAddressDeny", "any")]


def notifier_config(data, host_name: str) -> dict:
    url = d.WEBHOOK_URL.value(data)
    return {
        "state_dir": d.STATE_DIR, "host": host_name, "webhook_url": url,
        "webhook_ca": d.CA_FILE if url and d.WEBHOOK_CA.value(data) else None,
        "email_to": d.EMAIL_TO.value(data), "dedupe_seconds": d.DEDUPE_SECONDS.value(data),
        "rate_per_hour": d.RATE_PER_HOUR.value(data), "reboot_pending_days": d.REBOOT_PENDING_DAYS.value(data),
        "reboot_required_file": reboot_guard.REQUIRED_FILE, "bot_unit": BOT_UNIT,
    }


def render_units(data) -> dict[str, str]:
    """Unit file name -> text: the daemon, the failure hook, the egress loader, refresher and timer."""
    common = dict(tool=d.TOOL, user=d.ALERT_USER, state_name=d.STATE_NAME)
    egress = dict(tool=bot_egress.TOOL, state_dir=d.EGRESS_STATE_NAME, bot_unit=d.UNIT, boot_unit=d.EGRESS_UNIT,
                  role="roles/alerts.py", args=f" --config {d.EGRESS_CONFIG} --state /var/lib/{d.EGRESS_STATE_NAME}"
                                                f"/state.json")
    return {
        d.UNIT: render("alerts/hardkit-alert.service.j2", egress_unit=d.EGRESS_UNIT, sandbox=SANDBOX,
                       key_credential=alert_notify.KEY_CREDENTIAL,
                       key_file=KEY_FILE if d.WEBHOOK_URL.value(data) else None, **common),
        d.HOOK_TEMPLATE: render("alerts/hardkit-alert-failed@.service.j2", dropin=d.ONFAILURE_DROPIN,
                                sandbox=HOOK_SANDBOX, **common),
        d.EGRESS_UNIT: render("bot/hardkit-bot-egress.service.j2", boot=True, action="load",
                              description="hardkit: the notifier's egress allow-list (nftables table inet "
                                          f"{d.EGRESS_TABLE})", **egress),
        d.EGRESS_REFRESH_UNIT: render("bot/hardkit-bot-egress.service.j2", boot=False, action="refresh",
                                      description="hardkit: re-resolve the webhook's host into the notifier's "
                                                  "allow-list", **egress),
        d.EGRESS_REFRESH_TIMER: render("bot/hardkit-bot-egress-refresh.timer.j2",
                                       minutes=d.EGRESS_REFRESH_MINUTES.value(data)),
    }


def render_egress_ruleset() -> str:
    return bot_egress.render_ruleset(user=d.ALERT_USER, table=d.EGRESS_TABLE, chain=d.EGRESS_CHAIN,
                                     counter=d.EGRESS_COUNTER, log_prefix=d.EGRESS_LOG_PREFIX,
                                     boot_unit=d.EGRESS_UNIT, role="roles/alerts.py",
                                     purpose="The notifier's egress allow-list", endpoints_key="alert_webhook_url")


def render_egress_config(data) -> str:
    url = d.WEBHOOK_URL.value(data)
    return json.dumps({"ruleset": d.EGRESS_RULESET, "table": d.EGRESS_TABLE,
                       "endpoints": [d.webhook_endpoint(url)] if url else []}, indent=1) + "\n"


def render_fail2ban() -> dict[str, str]:
    return {d.F2B_ACTION: render("alerts/fail2ban-action.conf.j2", tool=d.TOOL),
            d.F2B_JAILS: render("alerts/fail2ban-jails.local.j2", jails=JAILS, action="hardkit-alert")}


@deploy("Alerts: the notifier")
def alerts():
    data = host.data
    service_account(d.ALERT_USER)

    tool = install_file(name="The notifier", dest=d.TOOL, mode="0755", content=TOOL_SOURCE.read_text(),
                        validate="python3 -m py_compile {path}")
    config = install_file(name="The notifier's config", dest=alert_notify.CONFIG_FILE, mode="0644",
                          content=json.dumps(notifier_config(data, host.name), indent=1) + "\n",
                          validate=f"python3 {d.TOOL} check-config {{path}}")
    ca = d.ca_text(data)
    changed_ca = [install_file(name="The webhook's CA", dest=d.CA_FILE, mode="0644", content=ca,
                               validate="openssl x509 -noout -in {path}")] if ca else []

    egress_files = [
        install_file(name="Notifier egress: endpoints", dest=d.EGRESS_CONFIG, mode="0644",
                     content=render_egress_config(data), validate=f"python3 {bot_egress.TOOL} check-config {{path}}"),
        install_file(name="Notifier egress: nftables table (checked with nft -c)", dest=d.EGRESS_RULESET,
                     mode="0644", content=render_egress_ruleset(), validate="nft -c -f {path}"),
    ]
    units = {name: install_file(name=f"Unit: {name}", dest=f"{d.UNIT_DIR}/{name}", mode="0644", content=text,
                                validate=UNIT_CHECK)
             for name, text in render_units(data).items()}
    dropins = [install_file(name="Every hardkit-*.service alerts when it fails (OnFailure= drop-in)",
                            dest=d.ONFAILURE_DROPIN, mode="0644",
                            content=render("alerts/onfailure.conf.j2", onfailure=d.ONFAILURE))]
    dropins += [install_file(name=f"{unit}: no alert about itself", dest=f"{d.UNIT_DIR}/{unit}.d/{d.NO_ONFAILURE_DROPIN}",
                             mode="0644", content=render("alerts/no-onfailure.conf.j2", dropin=d.ONFAILURE_DROPIN))
                for unit in d.NO_ONFAILURE_UNITS]
    server.shell(name="Reload systemd for the notifier's units", _if=any_changed(*units.values(), *dropins),
                 commands=["systemctl daemon-reload"])

    egress_changed = any_changed(*egress_files, units[d.EGRESS_UNIT])
    systemd.service(name="Load the notifier's allow-list at boot", service=d.EGRESS_UNIT, running=True,
                    enabled=True)
    server.shell(name="Reload the notifier's allow-list", _if=egress_changed,
                 commands=[f"systemctl reload-or-restart {d.EGRESS_UNIT}"])
    systemd.service(name="Refresh the webhook's addresses on a timer", service=d.EGRESS_REFRESH_TIMER,
                    running=True, enabled=True)

    f2b = [install_file(name=f"fail2ban: {path.rsplit('/', 1)[1]}", dest=path, mode="0644", content=text)
           for path, text in render_fail2ban().items()]
    # A restart, not `fail2ban-client reload`: a reload does not add an action to a running jail (seen on a
    # Debian 12 lab host); the bans are kept in fail2ban's database and put back.
    server.shell(name="fail2ban: check and restart with the alert action", _if=any_changed(*f2b),
                 commands=["fail2ban-client -t >/dev/null && systemctl restart fail2ban.service"])

    systemd.service(name="The notifier runs", service=d.UNIT, running=True, enabled=True)
    key_changed = bool(data.get(d.KEY_CHANGED_KEY))
    server.shell(name="Restart the notifier for a changed program, config, unit or key",
                 _if=lambda: key_changed or any_changed(tool, config, units[d.UNIT], *changed_ca)(),
                 commands=[f"systemctl restart {d.UNIT}"])


apply = alerts
