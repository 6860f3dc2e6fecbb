"""Automatic security updates with a reboot policy that knows the application.

unattended-upgrades installs updates from the Debian security archive only (point releases too
if the inventory says so) and never reboots by itself. needrestart restarts services that still
use replaced libraries, except units the inventory protects (the bot restarts itself only when
flat). A reboot that updates need (new kernel, libc) is done by hardkit's reboot guard: a timer
fires once a day at the inventory's window plus a random margin, and the guard reboots only if
no holder objects — an inhibitor file in INHIBIT_DIR (the bot writes one while it holds
exposure) or a systemd-logind block lock on shutdown. A held reboot is retried until the window
closes and stays pending; the compliance check reports how long.

Usage: ``roles.updates.apply()``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, server, systemd
from pyinfra.operations.util import any_changed

from roles import reboot_guard
from roles.data import DataKey, is_bool
from roles.ops import install_file, quiet_or_fail, render


def _is_hhmm(v) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v)
    return None if ok else f"must be a time HH:MM (24 h, the host's time zone), not {v!r}"


def _is_minutes(lo, hi):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"must be a whole number of minutes between {lo} and {hi}, not {v!r}"
    return check


def _is_str_list(v) -> str | None:
    return None if isinstance(v, list) and all(isinstance(s, str) and s for s in v) else \
        f"must be a list of non-empty strings, not {v!r}"


POINT_RELEASES = DataKey(
    "updates_point_releases", False,
    "Also install Debian's point-release and -updates packages automatically. false: security archive only.",
    is_bool)
PACKAGE_BLOCKLIST = DataKey(
    "updates_package_blocklist", [],
    "Package name patterns (regular expressions) unattended-upgrades never touches.", _is_str_list)
REBOOT_WINDOW = DataKey(
    "reboot_window", "04:00",
    "When the reboot guard may reboot for pending updates: HH:MM in the host's time zone (UTC on most VPSs).",
    _is_hhmm)
REBOOT_MARGIN = DataKey(
    "reboot_window_margin_minutes", 30,
    "Random delay after reboot_window (so a fleet does not reboot at once).", _is_minutes(0, 720))
REBOOT_RETRY = DataKey(
    "reboot_window_minutes", 120,
    "While a holder keeps the reboot back, the guard re-checks this long before giving up until the next day.",
    _is_minutes(1, 1380))
REBOOT_AUTOMATIC = DataKey(
    "reboot_automatic", True,
    "Let the guard reboot in the window. false: it never reboots; pending reboots are only reported.", is_bool)
REBOOT_PENDING_MAX_DAYS = DataKey(
    "reboot_pending_max_days", 7,
    "The compliance check fails once a required reboot has been pending longer than this.",
    lambda v: None if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 90
    else f"must be a number of days 1-90, not {v!r}")
NEEDRESTART_PROTECTED = DataKey(
    "needrestart_protected_units", ["hardkit-bot.*"],
    "Unit name patterns (regular expressions) needrestart must never restart by itself.", _is_str_list)

KEYS = [POINT_RELEASES, PACKAGE_BLOCKLIST, REBOOT_WINDOW, REBOOT_MARGIN, REBOOT_RETRY, REBOOT_AUTOMATIC,
        REBOOT_PENDING_MAX_DAYS, NEEDRESTART_PROTECTED]

PACKAGES = ["unattended-upgrades", "needrestart", "python3", "apt-utils"]
SECURITY_ORIGIN = "origin=Debian,codename=${distro_codename}-security,label=Debian-Security"
POINT_RELEASE_ORIGINS = ["origin=Debian,codename=${distro_codename},label=Debian",
                         "origin=Debian,codename=${distro_codename}-updates"]
PERIODIC_FILE = "/etc/apt/apt.conf.d/20auto-upgrades"
UU_FILE = "/etc/apt/apt.conf.d/52hardkit-unattended-upgrades"
NEEDRESTART_FILE = "/etc/needrestart/conf.d/60-hardkit.conf"
#: apt's periodic settings (apt-daily.timer: lists; apt-daily-upgrade.timer: unattended-upgrade).
PERIODIC = {"APT::Periodic::Update-Package-Lists": "1", "APT::Periodic::Unattended-Upgrade": "1",
            "APT::Periodic::AutocleanInterval": "7"}
UU_SETTINGS = {
    "Unattended-Upgrade::Automatic-Reboot": "false",  # the guard reboots, not u-u
    "Unattended-Upgrade::Remove-Unused-Kernel-Packages": "true",
    "Unattended-Upgrade::Remove-New-Unused-Dependencies": "true",
    "Unattended-Upgrade::MinimalSteps": "true",
    "Unattended-Upgrade::AutoFixInterruptedDpkg": "true",
}

GUARD = "/usr/local/sbin/hardkit-reboot-guard"
GUARD_UNIT = "hardkit-reboot-guard.service"
GUARD_TIMER = "hardkit-reboot-guard.timer"
GUARD_STATE = "/var/lib/hardkit/reboot-guard.json"
GUARD_POLL_SECONDS = 30
#: The inhibitor contract (agreed with the bot): one JSON line per holder file in this folder.
INHIBIT_DIR = "/run/hardkit/reboot-inhibitors"
#: Members may create inhibitor files (the bot's service user joins it: SupplementaryGroups=).
INHIBIT_GROUP = "hardkit-inhibit"
#: Group-writable and setgid, deliberately not sticky: a holder whose service runs with
#: DynamicUser= may come back under another UID and must still be able to replace its own file
#: (a sticky folder would refuse, and the old file's dead pid would make it stale).
INHIBIT_MODE = "2770"
TMPFILES = "/etc/tmpfiles.d/hardkit-reboot-inhibitors.conf"
#: The guard program, installed as GUARD: a module of its own (tested as one), configured by
#: guard_config() in reboot_guard.CONFIG_FILE.
GUARD_SOURCE = Path(reboot_guard.__file__)


def guard_config() -> str:
    """The guard's config file: the values it used to get substituted into its text."""
    return json.dumps({"inhibit_dir": INHIBIT_DIR, "state_file": GUARD_STATE}, indent=2) + "\n"


def origins(data) -> list[str]:
    """The Origins-Pattern entries in force (what the dry run must select from)."""
    return [SECURITY_ORIGIN] + (POINT_RELEASE_ORIGINS if POINT_RELEASES.value(data) else [])


def timer_calendar(data) -> str:
    return f"*-*-* {REBOOT_WINDOW.value(data)}:00"


APT_CONFIG_CHECK = "apt-config -c {path} dump >/dev/null"
UNIT_CHECK = quiet_or_fail("systemd-analyze verify {path}")


@deploy("Automatic security updates and the reboot guard")
def updates():
    data = host.data
    apt.packages(name="Install unattended-upgrades, needrestart", packages=PACKAGES)

    install_file(name="apt: periodic update and unattended-upgrade", dest=PERIODIC_FILE, mode="0644",
                 content=render("os/20auto-upgrades.j2", periodic=PERIODIC), validate=APT_CONFIG_CHECK)
    install_file(name="unattended-upgrades: security origin only, never reboots", dest=UU_FILE, mode="0644",
                 content=render("os/52hardkit-unattended-upgrades.j2", origins=origins(data),
                                blocklist=PACKAGE_BLOCKLIST.value(data), settings=UU_SETTINGS),
                 validate=APT_CONFIG_CHECK)
    install_file(name="needrestart: restart services automatically, protected units excepted",
                 dest=NEEDRESTART_FILE, mode="0644",
                 content=render("os/needrestart.conf.j2", protected=NEEDRESTART_PROTECTED.value(data)),
                 validate="perl -c {path} 2>/dev/null")

    server.group(name=f"Group that may hold reboots: {INHIBIT_GROUP}", group=INHIBIT_GROUP, system=True)
    tmpfiles = install_file(name="Reboot inhibitor folder (tmpfiles.d)", dest=TMPFILES, mode="0644",
                            content=render("os/tmpfiles-inhibitors.conf.j2", dir=INHIBIT_DIR, mode=INHIBIT_MODE,
                                           group=INHIBIT_GROUP))
    server.shell(name="Create the inhibitor folder now", _if=tmpfiles.did_change,
                 commands=[f"systemd-tmpfiles --create {TMPFILES}"])

    install_file(name="The reboot guard", dest=GUARD, mode="0755", content=GUARD_SOURCE.read_text(),
                 validate="python3 -m py_compile {path}")
    install_file(name="The reboot guard's config", dest=reboot_guard.CONFIG_FILE, mode="0644",
                 content=guard_config(), validate=f"python3 {GUARD} check-config {{path}}")
    max_wait = REBOOT_RETRY.value(data) * 60
    service = install_file(name="Unit: the reboot guard", dest=f"/etc/systemd/system/{GUARD_UNIT}", mode="0644",
                           content=render("os/hardkit-reboot-guard.service.j2", guard=GUARD, max_wait=max_wait,
                                          poll=GUARD_POLL_SECONDS, timeout=max_wait + 600),
                           validate=UNIT_CHECK)
    timer = install_file(name="Timer: the reboot window", dest=f"/etc/systemd/system/{GUARD_TIMER}", mode="0644",
                         content=render("os/hardkit-reboot-guard.timer.j2", calendar=timer_calendar(data),
                                        margin=REBOOT_MARGIN.value(data)),
                         validate=UNIT_CHECK)
    server.shell(name="Reload systemd for the guard units", _if=any_changed(service, timer),
                 commands=["systemctl daemon-reload"])
    systemd.service(name="Reboot window timer", service=GUARD_TIMER,
                    running=REBOOT_AUTOMATIC.value(data), enabled=REBOOT_AUTOMATIC.value(data))
    server.shell(name="Restart the timer for a changed window", _if=timer.did_change,
                 commands=[f"systemctl try-restart {GUARD_TIMER}"])
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        systemd.service(name=f"{unit} runs", service=unit, running=True, enabled=True)


apply = updates
