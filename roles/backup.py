"""Encrypted backups of a VPS with restic, to its repository on a backup server over SFTP.

What: the bot's ledger (taken by the bot itself through SQLite's online backup API, never a raw copy
of the live WAL files) with its state file and the audit chain's key, the bot's config
(/etc/hardkit-bot) and the deployment record (/var/lib/hardkit). restic encrypts it all on the VPS
with the repository password; the backup server only stores ciphertext.

How: roles/backup_job.py installed as the program, run by hardkit-backup.service on a timer
(backup_interval_minutes) and hardkit-backup-check.service (`restic check`) on another. Both read
their secrets as encrypted credentials (LoadCredentialEncrypted=), delivered by the deploy like the
bot's (deploy/credentials.py). A failure fails the unit, which the notifier alerts on.
The firewall lets the host reach the backup server's SSH port (roles/firewall.py adds
backup_data.egress_rules to the output chain).

Usage: ``roles.backup.apply()`` (after roles.bot: the unit loads the bot's audit key).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from roles import backup_job
from roles.backup_data import (BACKUP_CHECK_INTERVAL, BACKUP_CREDENTIALS, BACKUP_INTERVAL, BACKUP_RETENTION,
                               BACKUP_TIMER, BACKUP_UNIT, BACKUP_USER, CACHE_DIR, CHECK_TIMER, CHECK_UNIT, CONFIG_FILE,
                               KNOWN_HOSTS, PROGRAM, STAGE_DIR, known_hosts_text, repository, target)
from roles.bot_config import BOT_ENABLED
from roles.bot_paths import BOT_USER, CONFIG_DIR, CRED_PREFIX, CREDSTORE, DEPLOY_RECORD_DIR, STATE_DIR
from roles.admin import service_account
from roles.ops import install_file, quiet_or_fail, render

PACKAGES = ["restic", "openssh-client"]
#: The program, shipped as the file it is (a module of its own, unit-tested as one).
PROGRAM_SOURCE = Path(backup_job.__file__)
#: Where the bot's command line is (roles/bot.py's CLI_LINK) and the audit key's credential.
BOT_CLI = "/usr/local/bin/hardkit-bot"
AUDIT_KEY = backup_job.AUDIT_KEY_CRED
#: What is backed up besides the ledger: the bot's config and the deploy's record.
PATHS = [CONFIG_DIR, DEPLOY_RECORD_DIR]
#: Seconds a run may take before systemd stops it (and the unit fails).
RUN_TIMEOUT = 3600
#: Capabilities of the backup run (its unit's user is not root): read the root-only files it backs up
#: (DAC_READ_SEARCH), hand the bot's user its staging folder (CHOWN) and switch to it for the ledger
#: (SETUID, SETGID). The check (`restic check`) needs none: its config is readable by the units' group.
BACKUP_CAPS = "CAP_DAC_READ_SEARCH CAP_SETUID CAP_SETGID CAP_CHOWN"
CHECK_CAPS = ""
#: The most `systemd-analyze security` may score each unit. The backup's 2.1 (measured) is above the kit's
#: 2.0 for its units: its capabilities and its network (the backup server's address only) are what it is.
EXPOSURE_MAX = {BACKUP_UNIT: 2.1, CHECK_UNIT: 2.0}
UNIT_CHECK = quiet_or_fail("systemd-analyze verify {path}")


def job_config(data, host_name: str) -> dict:
    """The program's config (CONFIG_FILE): everything it needs but the secrets."""
    return {"repository": repository(data, host_name), "port": target(data)["port"], "known_hosts": KNOWN_HOSTS,
            "cache_dir": CACHE_DIR, "stage_dir": STAGE_DIR, "paths": PATHS,
            "retention": BACKUP_RETENTION.value(data),
            "ledger": ({"state_dir": STATE_DIR, "cli": BOT_CLI, "user": BOT_USER} if BOT_ENABLED.value(data) else None)}


def credentials(data) -> list[tuple[str, str]]:
    """(name, ciphertext path) of each credential the units load: the backup's secrets, and the audit key
    when the bot runs here (so a restored ledger's chain can be verified on a new host)."""
    names = list(BACKUP_CREDENTIALS) + ([AUDIT_KEY] if BOT_ENABLED.value(data) else [])
    return [(n, f"{CREDSTORE}/{CRED_PREFIX}{n}") for n in names]


def render_units(data, program: str = PROGRAM) -> dict[str, str]:
    """{unit file name: text} for the four units."""
    what = "the bot's ledger, its config and the deploy record" if BOT_ENABLED.value(data) else "the deploy record"
    common = dict(program=program, timeout=RUN_TIMEOUT, credentials=credentials(data), user=BACKUP_USER,
                  server_address=target(data)["address"],
                  cache_name=CACHE_DIR.rsplit("/", 1)[1], stage_name=STAGE_DIR.rsplit("/", 1)[1])
    return {
        BACKUP_UNIT: render("backup/hardkit-backup.service.j2", what=what, caps=BACKUP_CAPS, **common),
        CHECK_UNIT: render("backup/hardkit-backup-check.service.j2", backup_unit=BACKUP_UNIT, caps=CHECK_CAPS,
                           **common),
        BACKUP_TIMER: render("backup/hardkit-backup.timer.j2", minutes=BACKUP_INTERVAL.value(data)),
        CHECK_TIMER: render("backup/hardkit-backup-check.timer.j2", minutes=BACKUP_CHECK_INTERVAL.value(data)),
    }


def credentialed_command(data, *args: str) -> str:
    """A root shell line running the program with the units' credentials and cache, in a transient unit
    (`snapshots`, `restore` from an operator's or `hardkit restore`'s session): the secrets stay credentials."""
    props = [f"LoadCredentialEncrypted={n}:{p}" for n, p in credentials(data)]
    props += [f"CacheDirectory={CACHE_DIR.rsplit('/', 1)[1]}", "CacheDirectoryMode=0700",
              f"RuntimeDirectory={STAGE_DIR.rsplit('/', 1)[1]}-cli", "RuntimeDirectoryMode=0700"]
    return ("systemd-run --quiet --wait --pipe --collect " + " ".join(f"-p {shlex.quote(p)}" for p in props)
            + f" {PROGRAM} " + " ".join(shlex.quote(a) for a in args))


@deploy("Encrypted backups (restic over SFTP)")
def backup():
    data = host.data
    if target(data) is None:
        for timer in (BACKUP_TIMER, CHECK_TIMER):
            files.file(name=f"No backups configured: no {timer}", path=f"/etc/systemd/system/{timer}", present=False)
        return
    apt.packages(name="Install restic and the SSH client", packages=PACKAGES)
    service_account(BACKUP_USER)
    install_file(name="The backup program", dest=PROGRAM, mode="0755", content=PROGRAM_SOURCE.read_text(),
                 validate="python3 -m py_compile {path}")
    install_file(name="The backup program's config", dest=CONFIG_FILE, mode="0640", group=BACKUP_USER,
                 content=json.dumps(job_config(data, host.name), indent=2) + "\n",
                 validate=f"python3 {PROGRAM} check-config {{path}}")
    install_file(name="The backup server's host keys", dest=KNOWN_HOSTS, mode="0644", content=known_hosts_text(data))
    units = [install_file(name=f"Unit: {name}", dest=f"/etc/systemd/system/{name}", mode="0644", content=text,
                          validate=UNIT_CHECK)
             for name, text in render_units(data).items()]
    server.shell(name="Reload systemd for the backup units", _if=any_changed(*units),
                 commands=["systemctl daemon-reload"])
    for timer in (BACKUP_TIMER, CHECK_TIMER):
        systemd.service(name=f"{timer} runs and starts at boot", service=timer, running=True, enabled=True)
    server.shell(name="Restart the backup timers for a changed schedule", _if=any_changed(units[2], units[3]),
                 commands=[f"systemctl try-restart {BACKUP_TIMER} {CHECK_TIMER}"])


apply = backup
