"""fail2ban: the sshd jail on the systemd journal and a recidive jail, banning through nftables sets.

Debian 12's package defaults do not work there (no rsyslog, hence no auth.log: fail2ban #3292,
#3567; iptables ban action): this role sets `backend = systemd` (python3-systemd) and the nftables
actions. The operator's fixed allow-list addresses (single /32 and /128 entries) are never banned;
wider allowed ranges still are, so a guessing neighbour inside an allowed range is stopped.
The configuration is checked with `fail2ban-client -t` before it goes live.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from roles.access_data import SSH_ALLOW_FROM, SSHD_PORT
from roles.data import DataKey
from roles.ops import install_file

JAIL_FILE = "/etc/fail2ban/jail.d/hardkit.local"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "fail2ban"
JAILS = ["sshd", "recidive"]


def _positive_int(v) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v > 0 else f"must be a positive integer, not {v!r}"


def _duration(v) -> str | None:
    import re
    return None if isinstance(v, str) and re.fullmatch(r"\d+[smhdw]?", v) else f"must be like '10m', '1h', '1d', not {v!r}"


BANTIME = DataKey("fail2ban_bantime", "1h", "First ban length (doubles for repeat offenders, up to a week).",
                  _duration)
FINDTIME = DataKey("fail2ban_findtime", "10m", "Window in which failures are counted.", _duration)
MAXRETRY = DataKey("fail2ban_maxretry", 3, "Failures within the window that trigger a ban.", _positive_int)
KEYS = [BANTIME, FINDTIME, MAXRETRY]


def never_banned(data) -> list[str]:
    """Loopback plus the single-address entries of the SSH allow-list."""
    fixed = [str(n) for n in map(ipaddress.ip_network, SSH_ALLOW_FROM.value(data))
             if n.num_addresses == 1]
    return ["127.0.0.1/8", "::1"] + fixed


def render(data) -> str:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, keep_trailing_newline=True)
    return env.get_template("hardkit.local.j2").render(
        ignoreip=never_banned(data), bantime=BANTIME.value(data), findtime=FINDTIME.value(data),
        maxretry=MAXRETRY.value(data), ports=[SSHD_PORT.value(data)])


@deploy("fail2ban")
def fail2ban():
    from pyinfra import host

    apt.packages(name="Install fail2ban with journal support", packages=["fail2ban", "python3-systemd"])
    jail = install_file(
        name="fail2ban jails (checked with fail2ban-client -t)", content=render(host.data), dest=JAIL_FILE,
        mode="0644",
        # -t reads the whole config folder: test a copy with the staged file in place of the live one.
        validate=("d=$(mktemp -d) && cp -a /etc/fail2ban/. $d/ && cp {path} $d/jail.d/hardkit.local && "
                  "fail2ban-client -c $d -t; rc=$?; rm -rf $d; exit $rc"))
    systemd.service(name="fail2ban running and enabled", service="fail2ban.service", running=True, enabled=True)
    systemd.service(name="fail2ban restarted on a new configuration", service="fail2ban.service", restarted=True,
                    _if=jail.did_change)


apply = fail2ban
