"""Egress allow-list for the bot: what the bot's uid may reach, enforced by nftables.

A table of its own (`inet hardkit_bot`), never a chain inside the guarded `inet hardkit` table
of roles/firewall.py: whatever goes wrong here, SSH is not affected. Its output chain sends
packets whose socket belongs to the bot's user (`meta skuid`) to a chain that accepts only
loopback, replies, DNS to the host's resolvers and TCP to the exchange endpoints (sets of
address . port, v4 and v6); everything else from that uid is logged (rate-limited), counted
(named counter) and dropped. Other users' packets pass this table untouched.

The table file is rendered here and checked with `nft -c` before it goes live. The sets are
filled on the host by hardkit-bot-egress (roles/bot_egress_refresh.py, installed as a tool):
at boot and at deploy by its own oneshot unit (which loads table and elements in one
transaction; a deploy reloads it, never restarts it), then every few minutes by a timer that
re-resolves names, keeps the last good addresses when DNS fails and puts the table back if
something flushed it. The bot's unit (roles/bot.py) Requires= and After= the boot unit.

Both firewall tables judge the bot's packets: an endpoint on a port other than 80/443 also
needs an `egress_allow` rule in the host firewall when `egress_policy` is restricted.

Usage: ``roles.bot_egress.apply()`` (after roles.bot_user: the table names the user).
"""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from roles import bot_egress_refresh as tool
from roles.bot_paths import BOT_USER, UNIT as BOT_UNIT
from roles.data import DataKey
from roles.ops import Lines, install_file, render
from roles.updates import UNIT_CHECK


def _check_endpoints(v) -> str | None:
    if not isinstance(v, list):
        return f"must be a list of 'host:port', 'IPv4:port' or '[IPv6]:port' strings, not {v!r}"
    problems = []
    for item in v:
        try:
            tool.parse_endpoint(item)
        except tool.ConfigError as e:
            problems.append(str(e))
    return "; ".join(problems) or None


def _check_minutes(v) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1440
    return None if ok else f"must be a whole number of minutes 1-1440, not {v!r}"


ENDPOINTS = DataKey(
    "bot_egress_endpoints", [],
    "Where the bot may connect (TCP): 'host:port', 'IPv4:port' or '[IPv6]:port'. Names are resolved on the host "
    "at deploy and by a timer. Default []: paper mode needs no egress (DNS and loopback stay allowed).",
    _check_endpoints)
REFRESH_MINUTES = DataKey(
    "bot_egress_refresh_minutes", 15,
    "How often the endpoints' names are resolved again (a failed lookup keeps the last good addresses).",
    _check_minutes)

KEYS = [ENDPOINTS, REFRESH_MINUTES]

TOOL = "/usr/local/sbin/hardkit-bot-egress"
TOOL_SOURCE = Path(tool.__file__)
RULESET_FILE = "/etc/hardkit/bot-egress.nft"
CONFIG_FILE = tool.CONFIG_FILE
#: The units' StateDirectory= (under /var/lib), where the last good resolutions are kept.
STATE_DIR = "hardkit-bot-egress"
BOOT_UNIT = "hardkit-bot-egress.service"
REFRESH_UNIT = "hardkit-bot-egress-refresh.service"
REFRESH_TIMER = "hardkit-bot-egress-refresh.timer"
#: The chain the bot's packets jump to, its drop counter and log prefix.
CHAIN = "bot_egress"
COUNTER = "bot_egress_dropped"
LOG_PREFIX = "hardkit-bot-egress-drop: "
UNIT_DIR = "/etc/systemd/system"


def render_ruleset(user: str = BOT_USER, table: str = tool.TABLE, chain: str = CHAIN, counter: str = COUNTER,
                   log_prefix: str = LOG_PREFIX, boot_unit: str = BOOT_UNIT, role: str = "roles/bot_egress.py",
                   purpose: str = "The bot's egress allow-list", endpoints_key: str = "bot_egress_endpoints") -> str:
    """The table file (`user` is the uid's name; nft resolves it when the file is loaded). The defaults
    are the bot's; the notifier's allow-list (roles/alerts.py) is the same table for its own user."""
    return render("bot/bot-egress.nft.j2", family=tool.FAMILY, table=table, user=user, chain=chain,
                  counter=counter, log_prefix=log_prefix, loader=TOOL, boot_unit=boot_unit, role=role,
                  purpose=purpose, endpoints_key=endpoints_key, sets={n: n for n in tool.ALL_SETS})


def render_config(data) -> str:
    """The tool's config: the ruleset file and the endpoints, normalised."""
    endpoints = [tool.parse_endpoint(e).text for e in ENDPOINTS.value(data)]
    return json.dumps({"ruleset": RULESET_FILE, "endpoints": endpoints}, indent=1) + "\n"


def render_units(data, tool_path: str = TOOL) -> dict[str, str]:
    """Unit name -> text: the boot loader, the refresher and its timer."""
    common = dict(tool=tool_path, state_dir=STATE_DIR, bot_unit=BOT_UNIT, boot_unit=BOOT_UNIT, args="",
                  role="roles/bot_egress.py")
    return {
        BOOT_UNIT: render("bot/hardkit-bot-egress.service.j2", boot=True, action="load",
                          description="hardkit: the bot's egress allow-list (nftables table inet hardkit_bot)",
                          **common),
        REFRESH_UNIT: render("bot/hardkit-bot-egress.service.j2", boot=False, action="refresh",
                             description="hardkit: re-resolve the bot's exchange endpoints into its allow-list",
                             **common),
        REFRESH_TIMER: render("bot/hardkit-bot-egress-refresh.timer.j2", minutes=REFRESH_MINUTES.value(data)),
    }


@deploy("Bot egress allow-list")
def bot_egress():
    data = host.data
    installed = [
        install_file(name="The egress allow-list tool", dest=TOOL, mode="0755", content=TOOL_SOURCE.read_text(),
                     validate="python3 -m py_compile {path}"),
        install_file(name="Egress allow-list: endpoints", dest=CONFIG_FILE, mode="0644", content=render_config(data),
                     validate=f"python3 {TOOL} check-config {{path}}"),
        install_file(name="Egress allow-list: nftables table (checked with nft -c)", dest=RULESET_FILE, mode="0644",
                     content=render_ruleset(), validate="nft -c -f {path}"),
    ]
    units = [install_file(name=f"Unit: {unit}", dest=f"{UNIT_DIR}/{unit}", mode="0644", content=text,
                          validate=UNIT_CHECK)
             for unit, text in render_units(data).items()]
    server.shell(name="Reload systemd for the egress units", _if=any_changed(*units),
                 commands=["systemctl daemon-reload"])
    changed = any_changed(*installed, units[0])
    loaded = host.get_fact(Lines, command=f"nft list table {tool.FAMILY} {tool.TABLE} >/dev/null 2>&1 "
                                          "&& echo loaded || true")
    server.shell(name="Load the allow-list (names resolved now)", _if=lambda: not loaded or changed(),
                 commands=[f"systemctl reload-or-restart {BOOT_UNIT}"])
    systemd.service(name="Load the allow-list at boot", service=BOOT_UNIT, running=True, enabled=True)
    server.shell(name="Re-enable the loader for a changed [Install]", _if=units[0].did_change,
                 commands=[f"systemctl reenable {BOOT_UNIT}"])
    systemd.service(name="Refresh the endpoints' addresses on a timer", service=REFRESH_TIMER,
                    running=True, enabled=True)
    server.shell(name="Restart the timer for a changed interval", _if=units[2].did_change,
                 commands=[f"systemctl try-restart {REFRESH_TIMER}"])


apply = bot_egress
