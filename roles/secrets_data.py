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

# Key the runner adds to the data it hands pyinfra for one run (never set by operators):
#: The credential names sent or removed on this host by this run (a sorted list, maybe empty):
#: the bot role restarts its unit when it is not empty.
CREDENTIALS_CHANGED_KEY = "hardkit_credentials_changed"
