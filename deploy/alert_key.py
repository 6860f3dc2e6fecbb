"""The notifier's webhook HMAC key: from the secrets environment to the host's credential store.

The key is `secrets/<env>/alert-webhook-key.age` (roles/alerts_data.KEY_SECRET). It travels the way
the bot's credentials do (deploy/credentials.py: decrypted in the controller's memory only, written to
the SSH channel's stdin of `systemd-creds encrypt`, keyed digests so an unchanged key is not sent
again) into /etc/credstore.encrypted/hardkit-alert.webhook-key, which hardkit-alert.service loads with
LoadCredentialEncrypted=. A host without a webhook gets no key (and one delivered earlier is removed).
"""

from __future__ import annotations

from deploy.credentials import credstore
from deploy.inventory import Host
from roles import alerts_data
from roles.alert_notify import KEY_CREDENTIAL
from roles.bot_paths import DEPLOY_RECORD_DIR

STORE = credstore(f"{DEPLOY_RECORD_DIR}/alert-credentials.digests", alerts_data.CRED_PREFIX)


def wanted_keys(hosts: list[Host], values: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """{host: {webhook-key: value}} for every host with a webhook (the inventory validator has made
    sure its environment holds the key), {} for the others."""
    wanted = {}
    for h in hosts:
        value = values.get(h.name, {}).get(alerts_data.KEY_SECRET)
        wanted[h.name] = {KEY_CREDENTIAL: value} if alerts_data.WEBHOOK_URL.value(h.data) and value else {}
    return wanted
