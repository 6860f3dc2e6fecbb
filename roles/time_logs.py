"""Time and logs: systemd-timesyncd against the inventory's NTP servers, a persistent journal with
size and age limits.

Logs stay in the systemd journal (Debian 12's default; fail2ban reads it): persistent in
/var/log/journal, compressed, capped by size and age so a chatty service cannot fill the disk
the bot's ledger lives on. timesyncd does not run in a container (the clock is the host's); its
unit says so itself (ConditionVirtualization=!container).

Usage: ``roles.time_logs.apply()``.
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, server, systemd

from roles.data import DataKey
from roles.ops import install_file, render


def _is_hosts(v):
    ok = isinstance(v, list) and v and all(isinstance(s, str) and re.fullmatch(r"[A-Za-z0-9.:-]+", s) for s in v)
    return None if ok else f"must be a non-empty list of NTP server names or addresses, not {v!r}"


def _is_size(v):
    return None if isinstance(v, str) and re.fullmatch(r"\d+[KMG]", v) else f"must be a size like 500M or 2G, not {v!r}"


def _is_span(v):
    ok = isinstance(v, str) and re.fullmatch(r"\d+(day|week|month|year)", v)
    return None if ok else f"must be a span like 30day, 12week, 6month, 1year, not {v!r}"


NTP_SERVERS = DataKey(
    "ntp_servers", ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org", "2.debian.pool.ntp.org"],
    "NTP servers systemd-timesyncd uses (the provider's own NTP server is a good first entry).", _is_hosts)
JOURNAL_MAX_USE = DataKey(
    "journal_max_use", "500M", "Most disk space the persistent journal may take (SystemMaxUse).", _is_size)
JOURNAL_RETENTION = DataKey(
    "journal_retention", "6month", "Journal entries older than this are removed (MaxRetentionSec).", _is_span)

KEYS = [NTP_SERVERS, JOURNAL_MAX_USE, JOURNAL_RETENTION]

TIMESYNCD_FILE = "/etc/systemd/timesyncd.conf.d/60-hardkit.conf"
JOURNALD_FILE = "/etc/systemd/journald.conf.d/60-hardkit.conf"
JOURNAL_DIR = "/var/log/journal"
#: Disk space journald always leaves free, whatever journal_max_use says.
JOURNAL_KEEP_FREE = "1G"
JOURNAL_FILE_MAX = "64M"


def journald_settings(data) -> dict[str, str]:
    # Audit=yes: Debian's journald has Audit=no, which switches kernel auditing *off* whenever journald
    # (re)starts - after this role, or after a systemd update - until the next boot (found on the vm tier).
    return {"Storage": "persistent", "Compress": "yes", "SystemMaxUse": JOURNAL_MAX_USE.value(data),
            "SystemKeepFree": JOURNAL_KEEP_FREE, "SystemMaxFileSize": JOURNAL_FILE_MAX,
            "MaxRetentionSec": JOURNAL_RETENTION.value(data), "ForwardToSyslog": "no", "Audit": "yes"}


@deploy("Time and logs")
def time_logs():
    data = host.data
    apt.packages(name="Install systemd-timesyncd", packages=["systemd-timesyncd"])
    timesync = install_file(name="timesyncd: NTP servers", dest=TIMESYNCD_FILE, mode="0644",
                            content=render("os/timesyncd.conf.j2", servers=NTP_SERVERS.value(data)))
    systemd.service(name="timesyncd enabled (it skips itself in a container)", service="systemd-timesyncd.service",
                    running=None, enabled=True)
    server.shell(name="Restart timesyncd for new servers", _if=timesync.did_change,
                 commands=["systemctl restart systemd-timesyncd.service", "timedatectl set-ntp true"])

    journal = install_file(name="journald: persistent, compressed, limited", dest=JOURNALD_FILE, mode="0644",
                           content=render("os/journald.conf.j2", settings=journald_settings(data)))
    server.shell(name="journald writes to /var/log/journal now", _if=journal.did_change,
                 commands=[f"install -d -m 2755 -o root -g systemd-journal {JOURNAL_DIR}",
                           f"systemd-tmpfiles --create --prefix {JOURNAL_DIR}",
                           "systemctl restart systemd-journald.service", "journalctl --flush"])


apply = time_logs
