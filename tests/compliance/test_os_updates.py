"""Automatic security updates and the reboot guard, as apt, unattended-upgrades and systemd see
them now (apt-config's merged view, the timers in force, the guard's own verdict)."""

from __future__ import annotations

import warnings

import pytest

from roles import updates as role
from tests.compliance import os_state


@pytest.mark.control("hk-os-upd-01")
def test_unattended_upgrades_runs(target):
    """unattended-upgrades and needrestart are installed; apt's daily timers run them"""
    pkgs = os_state.packages(target)
    assert {"unattended-upgrades", "needrestart"} <= set(pkgs)
    for key, value in role.PERIODIC.items():
        assert os_state.apt_values(target, key) == [value], f"{key}={os_state.apt_values(target, key)}"
    timers = os_state.units(target, ["apt-daily.timer", "apt-daily-upgrade.timer"])
    for name, unit in timers.items():
        assert unit.get("ActiveState") == "active" and unit.get("UnitFileState") == "enabled", unit


@pytest.mark.control("hk-os-upd-02")
def test_security_origin_only(target):
    """unattended-upgrades takes packages from the security archive only (point releases if the inventory says so)"""
    have = os_state.apt_values(target, "Unattended-Upgrade::Origins-Pattern")
    assert have == role.origins(target.data), f"Origins-Pattern in force: {have}"
    assert os_state.apt_values(target, "Unattended-Upgrade::Allowed-Origins") == []
    blocked = os_state.apt_values(target, "Unattended-Upgrade::Package-Blacklist")
    assert blocked == role.PACKAGE_BLOCKLIST.value(target.data), blocked


@pytest.mark.control("hk-os-upd-03")
def test_reboot_only_by_the_guard(target):
    """unattended-upgrades never reboots; the guard's timer holds the inventory's window"""
    assert os_state.apt_values(target, "Unattended-Upgrade::Automatic-Reboot") == ["false"]
    timer = os_state.units(target, [role.GUARD_TIMER])[role.GUARD_TIMER]
    if not role.REBOOT_AUTOMATIC.value(target.data):
        assert timer.get("ActiveState") != "active", "reboot_automatic=false, but the window timer runs"
        return
    assert timer.get("ActiveState") == "active" and timer.get("UnitFileState") == "enabled", timer
    calendar = timer.get("TimersCalendar", "")
    assert f"OnCalendar={role.timer_calendar(target.data)}" in calendar, calendar
    margin = role.REBOOT_MARGIN.value(target.data)
    assert timer.get("RandomizedDelayUSec") == (f"{margin}min" if margin else "0"), timer.get("RandomizedDelayUSec")


@pytest.mark.control("hk-os-upd-04")
def test_needrestart_restarts_services(target):
    """needrestart restarts services on its own, except the protected units"""
    conf = os_state.text(target, role.NEEDRESTART_FILE) or ""
    assert "$nrconf{restart} = 'a';" in conf
    for pattern in role.NEEDRESTART_PROTECTED.value(target.data):
        assert f"qr(^{pattern})" in conf, f"{pattern} is not protected"


@pytest.mark.control("hk-os-upd-05")
def test_inhibitor_folder(target):
    """The reboot inhibitor folder exists: root and its holders' group only"""
    st = os_state.stats(target, [role.INHIBIT_DIR])
    assert st.get(role.INHIBIT_DIR) == ("root", role.INHIBIT_GROUP, int(role.INHIBIT_MODE, 8)), st


@pytest.mark.control("hk-os-upd-06")
def test_reboot_pending_time(target):
    """A required reboot has not been pending for too long (reports for how long, and what holds it)"""
    state = os_state.guard_status(target)
    if not state["required"]:
        return
    days = state["pending_seconds"] / 86400
    held = "; ".join(f"{h['holder']}: {h.get('reason', '')}" for h in state["holders"]) or "nothing"
    message = (f"reboot required for {days:.1f} days (since {state['pending_since']}: "
               f"{'; '.join(state['reasons'])}), held by {held}")
    limit = role.REBOOT_PENDING_MAX_DAYS.value(target.data)
    assert days <= limit, message + f" — over the {limit}-day limit"
    warnings.warn(message)
