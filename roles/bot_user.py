"""The bot's system user and the operators' group.

A fixed system user (not DynamicUser=), so the egress firewall can match the bot's packets by
uid. Operators (the inventory's admin) join `hardkit-operators`, the group of the bot's control
socket and dashboard socket: they can halt and inspect the bot without sudo.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from roles.access_data import ADMIN_USER
from roles.bot_paths import BOT_USER, OPERATORS_GROUP


@deploy("Bot user and operators")
def bot_user():
    server.group(name=f"Group of the bot's operators: {OPERATORS_GROUP}", group=OPERATORS_GROUP, system=True)
    server.user(name=f"System user for the bot: {BOT_USER}", user=BOT_USER, system=True,
                shell="/usr/sbin/nologin", home="/nonexistent", create_home=False, groups=[OPERATORS_GROUP])
    server.user(name="The admin operates the bot", user=ADMIN_USER.value(host.data),
                groups=[OPERATORS_GROUP], append=True)


apply = bot_user
