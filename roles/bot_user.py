"""The bot's service user and the operators' group.

A dedicated system user (not DynamicUser=): the egress allow-list (roles/bot_egress.py) matches
the bot's packets by uid, which must exist before that table loads and stay the same at every
boot. The user has no login shell, no home and a locked password: it only runs the service.
The inventory's admin joins the operators' group, which owns the bot's control socket, so
`hardkit bot ...` works over SSH as the admin without sudo.

Usage: ``roles.bot_user.apply()`` (before roles.bot and roles.bot_egress).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from roles.access_data import ADMIN_USER
from roles.admin import service_account
from roles.bot_paths import BOT_USER, OPERATORS_GROUP

KEYS: list = []


@deploy("Bot service user")
def bot_user():
    admin = ADMIN_USER.value(host.data)
    service_account(BOT_USER)
    server.group(name=f"Group {OPERATORS_GROUP} (may use the bot's control socket)", group=OPERATORS_GROUP,
                 system=True)
    server.user(name=f"Admin {admin} in {OPERATORS_GROUP}", user=admin, groups=[OPERATORS_GROUP], append=True,
                ensure_home=False)


apply = bot_user
