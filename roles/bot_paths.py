"""Where the bot lives on the VPS and who it runs as: the names every bot role and check shares.

The bot runs as a dedicated system user (not DynamicUser=): the egress firewall matches its
packets by uid (`meta skuid`), which needs a uid that is the same at every boot.
"""

from __future__ import annotations

#: Service user and its primary group (no shell, no home, no password).
BOT_USER = "hardkit-bot"
#: Operators who may use the bot's control socket (0660, this group); the admin joins it.
OPERATORS_GROUP = "hardkit-operators"
#: The systemd unit.
UNIT = "hardkit-bot.service"

CONFIG_DIR = "/etc/hardkit-bot"
CONFIG_FILE = f"{CONFIG_DIR}/bot.toml"
#: systemd-creds ciphertexts, one file per credential: hardkit-bot.<credential name>.
CREDSTORE = "/etc/credstore.encrypted"
CRED_PREFIX = "hardkit-bot."

INSTALL_ROOT = "/opt/hardkit-bot"
RELEASES_DIR = f"{INSTALL_ROOT}/releases"
CURRENT_LINK = f"{INSTALL_ROOT}/current"

#: StateDirectory= and RuntimeDirectory= of the unit.
STATE_DIR = "/var/lib/hardkit-bot"
RUNTIME_DIR = "/run/hardkit-bot"
CONTROL_SOCKET = f"{RUNTIME_DIR}/control.sock"
#: The read-only dashboard (HTTP on a Unix socket, same mode and group as the control socket);
#: reached with `hardkit-bot dashboard-proxy` over an SSH exec channel.
DASHBOARD_SOCKET = f"{RUNTIME_DIR}/dashboard.sock"

#: The deploy's own root-only record folder (credential digests, salt, release record).
DEPLOY_RECORD_DIR = "/var/lib/hardkit"
