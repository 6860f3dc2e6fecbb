"""Encrypted backups of a VPS with restic, to its repository on a backup server over SFTP.

What: the bot's ledger (taken by the bot itself through SQLite's online backup API, never a raw copy
of the live WAL files) with its state file and the audit chain's key, the bot's config
(/etc/hardkit-bot) and the deployment record (/var/lib/hardkit). restic encrypts it all on the VPS
with the repository password; the backup server only stores ciphertext.

How: roles/backup_job.py installed as the program, run by hardkit-backup.service on a timer
(backup_interval_minutes) and hardkit-backup-check.service (`restic check`) on another. Where the bot
runs, hardkit-backup-stage.service (required by the backup, run before it) takes the ledger's copy as the
bot's user, offline and without a capability; the backup unit only reads it (one capability: read
root-only files), so neither unit switches users or hands files over. Both read
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
                               KNOWN_HOSTS, LEDGER_STAGE_DIR, PROGRAM, RESTORED_MARKER, STAGE_DIR, STAGE_UNIT,
                               known_hosts_text, repository, target)
from roles.bot import CLI_LINK, SANDBOX as BOT_SANDBOX
from roles.bot_config import BOT_ENABLED
from roles.bot_paths import BOT_USER, CONFIG_DIR, CRED_PREFIX, CREDSTORE, DEPLOY_RECORD_DIR, STATE_DIR
from roles.admin import service_account
from roles.ops import install_file, quiet_or_fail, render

PACKAGES = ["restic", "openssh-client"]
#: The program, shipped as the file it is (a module of its own, unit-tested as one).
PROGRAM_SOURCE = Path(backup_job.__file__)
#: The audit key's credential.
AUDIT_KEY = backup_job.AUDIT_KEY_CRED
#: Where the stage unit's `hardkit-bot backup` puts the ledger's copy (the folder the program reads it from).
STAGED_LEDGER = f"{LEDGER_STAGE_DIR}/{backup_job.LEDGER_SUBDIR}"
#: What is backed up besides the ledger: the bot's config and the deploy's record.
PATHS = [CONFIG_DIR, DEPLOY_RECORD_DIR]
#: Seconds a run may take before systemd stops it (and the unit fails).
RUN_TIMEOUT = 3600
#: Capabilities of the backup run (its unit's user is not root): read the root-only files it backs up
#: (/etc/hardkit-bot is root:hardkit-operators 0750, /var/lib/hardkit root's 0700) and the ledger as the
#: stage unit left it (the bot's user's, 0700). The check (`restic check`) needs none: its config is
#: readable by the units' group. The stage unit needs none either: it runs as the ledger's owner.
BACKUP_CAPS = "CAP_DAC_READ_SEARCH"
CHECK_CAPS = ""
#: The stage unit's sandbox: the bot's own (shared, not copied), with no network at all and no other user
#: in view: it reads the bot's ledger and writes a copy, nothing more.
STAGE_SANDBOX = [(k, v) for k, v in BOT_SANDBOX if k != "RestrictAddressFamilies"] + [
    ("RestrictAddressFamilies", "none"), ("PrivateNetwork", "yes"), ("IPAddressDeny", "any"),
    ("PrivateUsers", "yes")]
#: The most `systemd-analyze security` may score each unit (offline in the unit tests, as rendered): what it
#: scores (systemd 252), below the kit's limit for its units (ext-units-01: audit_unit_max_exposure, 2.0).
#: What is left for the backup: its capability, the network (the backup server's address only), AF_UNIX
#: (its ssh-agent), the system calls ssh-agent needs (setrlimit), its credentials' TPM; the stage unit: only
#: the host's root directory and a readable clock.
EXPOSURE_MAX = {BACKUP_UNIT: 1.6, CHECK_UNIT: 1.4, STAGE_UNIT: 0.2}
UNIT_CHECK = quiet_or_fail("systemd-analyze verify {path}")


def job_config(data, host_name: str) -> dict:
    """The program's config (CONFIG_FILE): everything it needs but the secrets."""
    return {"repository": repository(data, host_name), "host": host_name, "restored_marker": RESTORED_MARKER,
            "port": target(data)["port"], "known_hosts": KNOWN_HOSTS,
            "cache_dir": CACHE_DIR, "stage_dir": STAGE_DIR, "paths": PATHS,
            "retention": BACKUP_RETENTION.value(data),
            "ledger": {"staged": STAGED_LEDGER} if BOT_ENABLED.value(data) else None}


def credentials(data) -> list[tuple[str, str]]:
    """(name, ciphertext path) of each credential the units load: the backup's secrets, and the audit key
    when the bot runs here (so a restored ledger's chain can be verified on a new host)."""
    names = list(BACKUP_CREDENTIALS) + ([AUDIT_KEY] if BOT_ENABLED.value(data) else [])
    return [(n, f"{CREDSTORE}/{CRED_PREFIX}{n}") for n in names]


def stage_command(cli: str = CLI_LINK, state_dir: str = STATE_DIR, to: str = STAGED_LEDGER) -> list[str]:
    """The stage unit's command: the bot's online backup of its ledger (and state file, paper exchange)
    into `to`, an empty folder."""
    return [cli, "backup", "--state-dir", state_dir, "--to", to]


def render_units(data, program: str = PROGRAM, cli: str = CLI_LINK) -> dict[str, str]:
    """{unit file name: text} for the four units, and the stage unit when the bot runs here, in the order they
    are installed: a unit after those it requires (each is checked with `systemd-analyze verify` as installed)."""
    bot = BOT_ENABLED.value(data)
    what = "the bot's ledger, its config and the deploy record" if bot else "the deploy record"
    common = dict(program=program, timeout=RUN_TIMEOUT, credentials=credentials(data), user=BACKUP_USER,
                  server_address=target(data)["address"],
                  cache_name=CACHE_DIR.rsplit("/", 1)[1], stage_name=STAGE_DIR.rsplit("/", 1)[1])
    units = {}
    if bot:   # first: the deploy installs (and systemd-analyze verify checks) units in this order
        stage_name = LEDGER_STAGE_DIR.rsplit("/", 1)[1]
        units[STAGE_UNIT] = render("backup/hardkit-backup-stage.service.j2", program=program, backup_unit=BACKUP_UNIT,
                                   command=shlex.join(stage_command(cli)), timeout=RUN_TIMEOUT, user=BOT_USER,
                                   runtime_dirs=f"{stage_name} {stage_name}/{backup_job.LEDGER_SUBDIR}",
                                   sandbox=STAGE_SANDBOX)
    units.update({
        BACKUP_UNIT: render("backup/hardkit-backup.service.j2", what=what, caps=BACKUP_CAPS,
                            stage_unit=STAGE_UNIT if bot else None, **common),
        CHECK_UNIT: render("backup/hardkit-backup-check.service.j2", backup_unit=BACKUP_UNIT, caps=CHECK_CAPS,
                           **common),
        BACKUP_TIMER: render("backup/hardkit-backup.timer.j2", minutes=BACKUP_INTERVAL.value(data)),
        CHECK_TIMER: render("backup/hardkit-backup-check.timer.j2", minutes=BACKUP_CHECK_INTERVAL.value(data)),
    })
    return units


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
    rendered = render_units(data)
    units = {name: install_file(name=f"Unit: {name}", dest=f"/etc/systemd/system/{name}", mode="0644", content=text,
                                validate=UNIT_CHECK)
             for name, text in rendered.items()}
    if STAGE_UNIT not in rendered:   # no bot here (any more): no ledger to stage
        units[STAGE_UNIT] = files.file(name=f"No bot: no {STAGE_UNIT}", path=f"/etc/systemd/system/{STAGE_UNIT}",
                                       present=False)
    server.shell(name="Reload systemd for the backup units", _if=any_changed(*units.values()),
                 commands=["systemctl daemon-reload"])
    for timer in (BACKUP_TIMER, CHECK_TIMER):
        systemd.service(name=f"{timer} runs and starts at boot", service=timer, running=True, enabled=True)
    server.shell(name="Restart the backup timers for a changed schedule",
                 _if=any_changed(units[BACKUP_TIMER], units[CHECK_TIMER]),
                 commands=[f"systemctl try-restart {BACKUP_TIMER} {CHECK_TIMER}"])

apply = backup
