"""File integrity (AIDE) and rootkit scanning (rkhunter) as they stand on the host: the packages,
the root-only baseline, the timers in force, and the verdict of each tool's own unit.

The verdicts come from the units the timers run (so a failure here is also a failed
`hardkit-*.service`, which alerts): the AIDE check is run now; rkhunter's scan (minutes long) is
read from its last run, and skipped, saying so, until one has finished.
"""

from __future__ import annotations

import pytest

from roles import integrity_data as d
from tests.compliance import os_state

#: The skip reason of hk-int-07 on a host where no scan has finished yet.
NO_SCAN_YET = "no rkhunter scan has finished on this host yet"
#: The skip reason of every hk-int control on a host deployed with integrity_enabled false.
INTEGRITY_OFF = "integrity_enabled is false"


@pytest.fixture(autouse=True)
def integrity_on(target):
    if not d.INTEGRITY_ENABLED.value(target.data):
        pytest.skip(f"{INTEGRITY_OFF} for this host: no AIDE or rkhunter to check")


def journal_tail(target, unit: str, lines: int = 15) -> str:
    return target.run(f"journalctl -u {unit} -n {lines} -o cat --no-pager").stdout.strip()


def timer_runs(target, timer: str) -> None:
    unit = os_state.units(target, [timer])[timer]
    assert unit.get("UnitFileState") == "enabled" and unit.get("ActiveState") == "active", unit


@pytest.mark.control("hk-int-01")
def test_aide_installed(target):
    """AIDE is installed with hardkit's configuration and check tool"""
    assert "aide" in os_state.packages(target)
    st = os_state.stats(target, [d.AIDE_CONF, d.AIDE_TOOL])
    assert st.get(d.AIDE_CONF, ("",))[0] == "root" and st.get(d.AIDE_TOOL, ("",))[0] == "root", st
    res = target.run(f"aide --config-check --config {d.AIDE_CONF}")
    assert res.rc == 0, res.stdout + res.stderr


@pytest.mark.control("hk-int-02")
def test_aide_baseline_root_only(target):
    """The AIDE baseline exists and only root can read or write it"""
    st = os_state.stats(target, [d.AIDE_DIR, d.AIDE_DB])
    assert st.get(d.AIDE_DB), f"no baseline at {d.AIDE_DB}"
    assert st[d.AIDE_DIR] == ("root", "root", 0o700), st
    assert st[d.AIDE_DB][:2] == ("root", "root") and st[d.AIDE_DB][2] & 0o077 == 0, st


@pytest.mark.control("hk-int-03")
def test_aide_timer(target):
    """The daily AIDE check is scheduled"""
    timer_runs(target, d.AIDE_CHECK_TIMER)


@pytest.mark.control("hk-int-04")
def test_aide_check_passes(target):
    """The file system matches the AIDE baseline (the check's unit, run now, succeeds)"""
    res = target.run(f"systemctl start {d.AIDE_CHECK_UNIT}")
    assert res.rc == 0, journal_tail(target, d.AIDE_CHECK_UNIT)


@pytest.mark.control("hk-int-05")
def test_rkhunter_ready(target):
    """rkhunter is installed, offline (no downloads, no mail, no cron jobs of its own) and its file properties are recorded"""
    assert "rkhunter" in os_state.packages(target)
    st = os_state.stats(target, [d.RKHUNTER_DAT])
    assert st.get(d.RKHUNTER_DAT), f"no file properties database ({d.RKHUNTER_DAT}): --propupd never ran"
    defaults = os_state.text(target, d.RKHUNTER_DEFAULTS) or ""
    for key, value in d.RKHUNTER_DEFAULT_VALUES.items():
        assert f'{key}="{value}"' in defaults, f"{d.RKHUNTER_DEFAULTS}: {key} is not {value!r}"
    local = os_state.text(target, d.RKHUNTER_LOCAL_CONF) or ""
    assert "WEB_CMD=/bin/false" in local and 'MAIL-ON-WARNING=""' in local, local


@pytest.mark.control("hk-int-06")
def test_rkhunter_timer(target):
    """The daily rkhunter scan is scheduled"""
    timer_runs(target, d.RKHUNTER_SCAN_TIMER)


@pytest.mark.control("hk-int-07")
def test_rkhunter_scan_clean(target):
    """rkhunter's last scan found nothing"""
    unit = os_state.units(target, [d.RKHUNTER_SCAN_UNIT])[d.RKHUNTER_SCAN_UNIT]
    ran = target.run(f"systemctl show -p ExecMainExitTimestampMonotonic --value {d.RKHUNTER_SCAN_UNIT}"
                     ).stdout.strip().strip("0")
    if not ran:  # a scan takes minutes: verify reads the timer's verdict rather than running one
        pytest.skip(f"{NO_SCAN_YET} (its daily timer runs the first)")
    assert unit.get("Result") == "success", journal_tail(target, d.RKHUNTER_SCAN_UNIT)
