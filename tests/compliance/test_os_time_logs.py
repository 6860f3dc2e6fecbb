"""Time and logs in force: timesyncd's servers and synchronisation, the journal's storage and limits."""

from __future__ import annotations

import re

import pytest

from roles import time_logs as role
from tests.compliance import os_state


def _timesync(target) -> dict[str, str]:
    out = target.fact("os:timedatectl", lambda t: t.check_output(
        "timedatectl show; timedatectl show-timesync 2>/dev/null || true"))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.control("hk-os-time-01")
def test_time_synchronised(target):
    """The clock is synchronised by NTP (systemd-timesyncd with the inventory's servers)"""
    target.require_kernel("clock synchronisation", "it runs on the provider's clock (timesyncd skips itself)")
    unit = os_state.units(target, ["systemd-timesyncd.service"])["systemd-timesyncd.service"]
    assert unit.get("ActiveState") == "active" and unit.get("UnitFileState") == "enabled", unit
    ts = _timesync(target)
    assert ts.get("NTP") == "yes", ts
    assert ts.get("SystemNTPServers", "").split() == role.NTP_SERVERS.value(target.data), ts.get("SystemNTPServers")
    assert ts.get("NTPSynchronized") == "yes", f"not synchronised (server {ts.get('ServerName', 'none')})"


@pytest.mark.control("hk-os-log-01")
def test_journal_persistent(target):
    """The journal is written to /var/log/journal (survives reboots)"""
    machine = target.check_output("cat /etc/machine-id").strip()
    path = f"{role.JOURNAL_DIR}/{machine}/system.journal"
    assert target.host.file(path).exists, f"{path} missing: the journal is volatile"
    conf = os_state.key_values(os_state.text(target, role.JOURNALD_FILE), sep="=")
    assert conf == role.journald_settings(target.data), conf


@pytest.mark.control("hk-os-log-02")
def test_journal_limits_in_force(target):
    """journald runs with the inventory's size limit"""
    out = target.check_output("journalctl -b -u systemd-journald -o cat --no-pager | "
                              "grep -E '^System Journal \\(' | tail -1")
    m = re.search(r"max ([\d.]+)([KMGT])", out)
    assert m, f"journald did not report its limits this boot: {out!r}"
    limit = role.JOURNAL_MAX_USE.value(target.data)
    units = "KMGT"
    have = float(m.group(1)) * 1024 ** units.index(m.group(2))
    want = float(limit[:-1]) * 1024 ** units.index(limit[-1])
    # journald may lower the cap to what SystemKeepFree leaves free on a small disk, never raise it
    assert have <= want * 1.001, f"journald's cap is {m.group(0)}, configured {limit}"
