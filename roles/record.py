"""The deploy record: what runs on this host, from which commit, since when, by whom.

Written last, root-only, as RECORD_FILE (JSON): the repository commit and whether the tree was
dirty, the bot release, hardkit's version, the time and operator of the deploy, and the SHA-256
of every file the roles manage by content (`roles.ops.install_file`, guarded sshd/firewall
changes). The digests are computed on the controller from what the roles wrote, so two hosts
deployed from the same commit with the same data carry identical digests (except for the files in
NAMES_THE_HOST, whose content is the host's own name by design); `hardkit status`
compares them with the files on the host to show drift.

Idempotent: the record is rewritten only when what it describes changed (commit, dirty flag,
release, digests) or when this deploy changed something on the host; its time and operator are
those of the last deploy that did. A no-op redeploy changes nothing.
"""

from __future__ import annotations

import json
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, deploy, operation

from roles import alert_notify
from roles.baseline import HARDKIT_RELEASE
from roles.bot_config import BOT_ENABLED
from roles.bot_paths import DEPLOY_RECORD_DIR
from roles.ops import MANAGED_FILES, Lines

RECORD_FILE = f"{DEPLOY_RECORD_DIR}/deploy-record.json"
#: Host data the runner sets per run (not an inventory key): {"commit", "dirty", "operator", "started"}.
RUN_KEY = "hardkit_run"
#: The record's fields that say *what* is deployed; the others say when and by whom.
IDENTITY = ("hardkit", "commit", "dirty", "bot_release", "files")

#: Managed files whose content names the host they are on (so they differ between any two hosts), and why.
NAMES_THE_HOST = {alert_notify.CONFIG_FILE: "an alert says which inventory host it comes from"}

KEYS: list = []


def identity(record: dict) -> dict:
    return {k: record.get(k) for k in IDENTITY}


def changed_this_run() -> bool:
    """Whether any operation of this deploy has changed the host so far (the record and the integrity
    baselines follow the deploy's own changes)."""
    for op_data in host.state.ops[host].values():
        meta = op_data.operation_meta
        if meta.is_complete() and meta.did_change():
            return True
    return False


@operation()
def write_record(run: dict, bot_release: str | None):
    """
    Write the deploy record when what it describes, or the host, changed in this run.

    + run: the runner's facts about this run: commit, dirty, operator, started (ISO 8601 UTC)
    + bot_release: the bot release this deploy installs (None: no bot)
    """
    record = {"hardkit": HARDKIT_RELEASE, "commit": run.get("commit"), "dirty": run.get("dirty"),
              "bot_release": bot_release, "files": dict(sorted(MANAGED_FILES[host.name].items())),
              "deployed_at": run.get("started"), "operator": run.get("operator")}
    text = "\n".join(host.get_fact(Lines, command=f"cat {RECORD_FILE} 2>/dev/null || true"))
    try:
        current = json.loads(text) if text else {}
    except ValueError:
        current = {}
    if identity(current) == identity(record) and not changed_this_run():
        host.noop(f"the record of {record['commit'] or 'this tree'} is in place")
        return
    data = (json.dumps(record, indent=2) + "\n").encode()
    yield f"install -d -m 0700 -o root -g root {DEPLOY_RECORD_DIR}"
    yield FileUploadCommand(BytesIO(data), f"{RECORD_FILE}.new", remote_temp_filename=host.get_temp_filename(RECORD_FILE))
    yield f"chown root:root {RECORD_FILE}.new && chmod 0600 {RECORD_FILE}.new && mv -f {RECORD_FILE}.new {RECORD_FILE}"


@deploy("Deploy record")
def record():
    from roles import bot_release

    release = bot_release.current().name if BOT_ENABLED.value(host.data) else None
    write_record(name="Deploy record (commit, release, digests of managed files)",
                 run=host.data.get(RUN_KEY) or {}, bot_release=release)


apply = record
