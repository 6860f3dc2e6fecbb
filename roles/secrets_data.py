"""Which encrypted secrets a host gets: the inventory key and the names the bot's credentials go by.

The values live in the repository as `secrets/<env>/<name>.age` (see deploy/secrets_store.py) and
reach the host outside pyinfra (deploy/credentials.py): pyinfra only ever sees the names of the
credentials that changed, in host data under CREDENTIALS_CHANGED_KEY.
"""

from __future__ import annotations

import re

from roles.data import DataKey

#: Environment and secret names: safe as folder and file names and as systemd credential names.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

#: Secret names that become the bot's credentials when the host's environment holds them
#: (systemd credential names: the unit reads them as $CREDENTIALS_DIRECTORY/<name>).
BOT_CREDENTIALS = ("exchange-api-key", "exchange-api-secret")
#: Secret names delivered as credentials for the backup units (roles/backup_data.py), not the bot's.
BACKUP_CREDENTIALS = ("restic-password", "backup-ssh-key")
#: Every secret name delivered to the host's credential store.
DELIVERED_CREDENTIALS = BOT_CREDENTIALS + BACKUP_CREDENTIALS
#: Credentials generated on each host, never taken from the repository (the audit chain's HMAC key).
HOST_GENERATED = ("audit-key",)


def _check_env(v) -> str | None:
    if not isinstance(v, str) or not NAME_RE.match(v):
        return f"must name a folder of secrets/ (lowercase letters, digits, '-', '_'), not {v!r}"
    return None


SECRETS_ENV = DataKey(
    "secrets_env", None,
    "The secrets environment whose values this host gets: secrets/<env>/*.age (HARDKIT_SECRETS_DIR overrides "
    "the secrets/ folder). Of its secrets, those named " + " and ".join(BOT_CREDENTIALS) + " are delivered as "
    "the bot's credentials. Unset: the host gets no credentials (paper mode needs none) and any that hardkit "
    "delivered earlier are removed. Every file of the environment must decrypt with the operator's age identity "
    "before any host is touched.",
    _check_env)

KEYS = [SECRETS_ENV]


def missing_secrets(data, names: tuple[str, ...], who: str) -> list[str]:
    """Problems when the host's secrets environment is unset or lacks one of `names` (`who` says what
    needs them, e.g. "bot is live"), found before any host is touched."""
    from deploy.secrets_store import secrets_root

    env = SECRETS_ENV.value(data)
    if env is None:
        return [f"{who} but secrets_env is not set: {', '.join(names)} must come from a secrets environment"]
    missing = [n for n in names if not (secrets_root() / env / f"{n}.age").is_file()]
    return [f"{who} but secrets environment {env!r} has no {', '.join(missing)}: add them with "
            f"`hardkit secrets set {env} NAME`"] if missing else []

# Key the runner adds to the data it hands pyinfra for one run (never set by operators):
#: The credential names sent or removed on this host by this run (a sorted list, maybe empty):
#: the bot role restarts its unit when it is not empty.
CREDENTIALS_CHANGED_KEY = "hardkit_credentials_changed"
