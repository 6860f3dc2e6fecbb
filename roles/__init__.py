"""hardkit roles: one module per control family, each an @deploy function with documented data keys.

`ROLE_MODULES` lists them in the order `deploy/site.py` applies them; the inventory validator
collects every module's `KEYS` from here, so a role that adds a key is validated automatically.
"""

ROLE_MODULES = [
    "roles.access_data",
    "roles.secrets_data",
    "roles.platform_data",  # issue 10: the host is a container (verify reports NOT VERIFIED)
    "roles.auditors_data",  # issue 10: thresholds of `hardkit audit`'s external auditors
    "roles.baseline",
    "roles.guard",
    "roles.admin",
    "roles.second_factor_data",  # issue 13: people's accounts and pam_oath before sshd asks for a second factor
    "roles.second_factor",
    "roles.backup_data",  # issue 12: backups; the backup server's account exists before sshd admits it
    "roles.backup_server",
    "roles.ssh",
    "roles.people_access",  # issue 13: people's SSH group and sudo only once sshd asks them for two factors
    "roles.firewall",
    "roles.fail2ban",
    # issue 4, the OS baseline
    "roles.updates",
    "roles.kernel",
    "roles.accounts",
    "roles.filesystem",
    "roles.audit",
    "roles.accounting",  # issue 10: process accounting where the kernel grants it
    "roles.time_logs",
    # issue 8, the bot on the VPS: its user, its egress allow-list (the unit requires it), the bot
    "roles.bot_user",
    "roles.bot_egress",
    "roles.bot",
    # issue 12: the notifier (after fail2ban, the bot's egress tool and the reboot guard it builds on)
    "roles.alerts_data",
    "roles.alerts",
    "roles.backup",  # issue 12: after the bot (its units load the bot's audit key)
    # issue 12: integrity baselines, after every role that changes the host (they take its changes in)
    "roles.integrity",
    # issue 11: what runs where, written last
    "roles.record",
]
