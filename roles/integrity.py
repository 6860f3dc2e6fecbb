"""File integrity (AIDE) and rootkit scanning (rkhunter), with baselines that follow the deploy.

AIDE records the watched trees (roles/integrity_data.py says which, and why) in a root-only
baseline; a daily timer compares the file system with it and its unit fails, naming every changed
file, when something changed. rkhunter's file properties are recorded at deploy and a daily scan
fails on any warning. Both units are `hardkit-*.service`, so the notifier alerts on their failure.

The deploy is the one legitimate source of change it knows of: this role runs after every other
role that changes the host (only the deploy record follows) and, when this run changed something,
takes the file system as it now is into both baselines; a no-op redeploy does neither. Packages
the system upgrades by itself are taken in by the AIDE check (hardkit-aide: files dpkg installed
and still vouches for) and by Debian's rkhunter apt hook (APT_AUTOGEN).

Usage: ``roles.integrity.apply()``.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from roles import aide_tool
from roles import integrity_data as d
from roles.access_data import ADMIN_USER
from roles.ops import install_file, quiet_or_fail, render
from roles.platform_data import CONTAINER
from roles.record import changed_this_run
from roles.second_factor_data import people

KEYS = d.KEYS
#: The AIDE tool, installed as d.AIDE_TOOL: a module of its own (tested as one).
AIDE_TOOL_SOURCE = Path(aide_tool.__file__)
UNIT_CHECK = quiet_or_fail("systemd-analyze verify {path}")
#: rkhunter reads rkhunter.conf.local from its main config's folder: check the staged copy beside
#: the host's main config, in a private scratch folder.
RKHUNTER_CONF_CHECK = ('t=$(mktemp -d) && cp /etc/rkhunter.conf "$t/" && cp {path} "$t/rkhunter.conf.local" && '
                       'out=$(rkhunter --config-check --nolog --configfile "$t/rkhunter.conf" 2>&1); rc=$?; '
                       'rm -rf "$t"; [ $rc -eq 0 ] || { echo "$out" >&2; exit 1; }')


def aide_conf(data) -> str:
    """AIDE's configuration for this host: the watched trees plus the SSH folders of its people."""
    users = [ADMIN_USER.value(data), *people(data)]
    watched = [d.aide_path_regex(p) for p in [*d.AIDE_WATCHED, *d.aide_home_paths(users)]]
    return render("integrity/aide.conf.j2", check_unit=d.AIDE_CHECK_UNIT, db=d.AIDE_DB, db_new=d.AIDE_DB_NEW,
                  excluded=d.AIDE_EXCLUDED,
                  perms_only={d.aide_path_regex(p): why for p, why in d.AIDE_PERMS_ONLY.items()},
                  watched=watched)


def calendar(data) -> str:
    return f"*-*-* {d.AIDE_CHECK_TIME.value(data)}:00"


@operation()
def refresh_baselines():
    """
    Build the AIDE baseline and rkhunter's properties if missing; take the host as it is now into
    both when this run changed something (run last: after every legitimate change of the deploy).
    """
    missing = not host.get_fact(File, path=d.AIDE_DB) or not host.get_fact(File, path=d.RKHUNTER_DAT)
    if not missing and not changed_this_run():
        host.noop("nothing changed in this run: the baselines stand")
        return
    yield "rkhunter --propupd --nolog"
    yield d.aide_command("baseline")


@deploy("File integrity and rootkit scanning")
def integrity():
    data = host.data
    if not d.INTEGRITY_ENABLED.value(data):
        for timer in (d.AIDE_CHECK_TIMER, d.RKHUNTER_SCAN_TIMER):
            if host.get_fact(File, path=f"/etc/systemd/system/{timer}"):
                systemd.service(name=f"{timer} stopped (integrity_enabled is false)", service=timer,
                                running=False, enabled=False)
        return
    apt.packages(name="Install AIDE and rkhunter (no mail agent, no Debian cron setup)",
                 packages=d.AIDE_PACKAGES + d.RKHUNTER_PACKAGES, no_recommends=True)

    files.directory(name="AIDE baseline folder (root only)", path=d.AIDE_DIR, user="root", group="root", mode="700")
    install_file(name="AIDE: what is watched", dest=d.AIDE_CONF, mode="0600", content=aide_conf(data),
                 validate="aide --config-check --config {path}")
    install_file(name="hardkit-aide (baseline and check)", dest=d.AIDE_TOOL, mode="0755",
                 content=AIDE_TOOL_SOURCE.read_text(), validate="python3 -m py_compile {path}")

    install_file(name="rkhunter: no cron jobs, downloads or mail; re-read after apt", dest=d.RKHUNTER_DEFAULTS,
                 mode="0644", content=render("integrity/rkhunter.defaults.j2", values=d.RKHUNTER_DEFAULT_VALUES,
                                              scan_timer=d.RKHUNTER_SCAN_TIMER),
                 validate="sh -n {path}")
    install_file(name="rkhunter: offline, Debian 12 exceptions with reasons", dest=d.RKHUNTER_LOCAL_CONF,
                 mode="0640", content=render("integrity/rkhunter.conf.local.j2", container=CONTAINER.value(data)),
                 validate=RKHUNTER_CONF_CHECK)

    when = {"calendar": calendar(data), "delay": d.CHECK_DELAY_MINUTES}
    units = [
        install_file(name="Unit: the AIDE check", dest=f"/etc/systemd/system/{d.AIDE_CHECK_UNIT}", mode="0644",
                     content=render("integrity/hardkit-aide-check.service.j2", tool=d.AIDE_TOOL, conf=d.AIDE_CONF,
                                    db=d.AIDE_DB, state=d.AIDE_DPKG_STATE, state_dir=d.AIDE_DIR),
                     validate=UNIT_CHECK),
        install_file(name="Unit: the rkhunter scan", dest=f"/etc/systemd/system/{d.RKHUNTER_SCAN_UNIT}",
                     mode="0644", content=render("integrity/hardkit-rkhunter-scan.service.j2"), validate=UNIT_CHECK),
    ]
    timers = [
        install_file(name=f"Timer: {timer}", dest=f"/etc/systemd/system/{timer}", mode="0644",
                     content=render(f"integrity/{timer}.j2", **when), validate=UNIT_CHECK)
        for timer in (d.AIDE_CHECK_TIMER, d.RKHUNTER_SCAN_TIMER)
    ]
    server.shell(name="Reload systemd for the integrity units", _if=any_changed(*units, *timers),
                 commands=["systemctl daemon-reload"])
    for timer, installed in zip((d.AIDE_CHECK_TIMER, d.RKHUNTER_SCAN_TIMER), timers):
        systemd.service(name=f"{timer} runs", service=timer, running=True, enabled=True)
        server.shell(name=f"Restart {timer} for a changed time", _if=installed.did_change,
                     commands=[f"systemctl try-restart {timer}"])

    refresh_baselines(name="Baselines: AIDE and rkhunter take in this deploy's changes")


apply = integrity
