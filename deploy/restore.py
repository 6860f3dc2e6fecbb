"""`hardkit restore INV --host NEW --from BACKUP-SERVER [--from-host LOST | --snapshot ID]`: a lost VPS's bot
back on a new one.

NEW is an inventory host with backup_to naming the lost host's repository on BACKUP-SERVER (a host with
backup_server: true) and the same secrets environment (the repository password and backup key). Steps:
1. deploy NEW like any host (its bot starts on a fresh ledger, its backup units are installed);
2. stop the bot and NEW's backup timer; pick the snapshot (choose_snapshot: the newest one of the lost host,
   never NEW's own unless asked by --from-host or --snapshot) and say which (id, host, time); restore it
   into a root-only tmpfs folder (/run), through the backup units' own credentials (the secrets never
   leave systemd's credential store);
3. make the snapshot's audit key NEW's audit-key credential (systemd-creds, on NEW), then put the ledger
   in place with `hardkit-bot restore` as the bot's user: integrity, latch and audit chain checked, the
   fresh ledger kept aside; the paper exchange's book comes back with it (the paper exchange lives on the
   host: its backed-up book stands for the exchange that a real venue keeps through a host's loss);
4. record the restore on NEW (backup_data.RESTORED_MARKER: from then on NEW backs up into the repository it
   took over) and start its backup timer again; start the bot: it reconciles with the exchange before
   trading and stays HALTED, saying why, when the ledger and the exchange disagree; a latched halt in the
   backup stays latched.
Prints each step's time and the bot's state at the end; exit 0 when the bot runs on the restored ledger.
A restore that fails leaves NEW's backup timer stopped (NEW holds no ledger worth backing up).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime

import paramiko

from deploy import connect, runner
from deploy.inventory import Host, Inventory, InventoryError
from roles import backup as backup_role
from roles import backup_data, backup_job, backup_server
from roles.bot import CLI_LINK, wait_for_bot_command
from roles.bot_config import BOT_ENABLED
from roles.bot_paths import BOT_USER, CONFIG_FILE, CONTROL_SOCKET, CRED_PREFIX, CREDSTORE, STATE_DIR, UNIT

#: Where the snapshot is restored on NEW: tmpfs, root-only, removed at the end (it holds the audit key).
WORK = "/run/hardkit-restore"
#: Seconds one step on NEW may take (a restic restore of a large ledger over a slow link).
STEP_TIMEOUT = 1800


class RestoreError(Exception):
    """A step failed on the host: said in one line, exit 1."""


@dataclass
class Outcome:
    timings: list[tuple[str, float]] = field(default_factory=list)
    restored: dict = field(default_factory=dict)
    snapshot: dict = field(default_factory=dict)   # which one: id, host, time (as restic recorded them)
    status: dict = field(default_factory=dict)
    config_differs: bool = False


def problems(inv: Inventory, new: str, source: str) -> list[str]:
    """Everything wrong with the request, at once, before any host is touched."""
    hosts = {h.name: h for h in inv.hosts}
    found = []
    if new not in hosts:
        found.append(f"--host {new!r} is not in the inventory")
    else:
        data = hosts[new].data
        if backup_data.target(data) is None:
            found.append(f"--host {new}: has no backup_to (it names the repository to restore from)")
        if not BOT_ENABLED.value(data):
            found.append(f"--host {new}: bot_enabled is false: there is no bot to restore")
    if source not in hosts:
        found.append(f"--from {source!r} is not in the inventory")
    elif not backup_server.enabled(hosts[source].data):
        found.append(f"--from {source}: is not a backup server (backup_server is not true)")
    if new == source:
        found.append("--host and --from name the same host")
    return found


def snapshot_time(snap: dict) -> datetime:
    """restic's RFC 3339 time (nanoseconds, any offset) as an aware datetime."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", snap["time"]).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def describe(snap: dict) -> dict:
    return {"id": snap.get("short_id") or snap["id"][:8], "host": snap.get("hostname"), "time": snap["time"]}


def choose_snapshot(snaps: list[dict], new: str, from_host: str | None = None, snapshot: str | None = None) -> dict:
    """The snapshot to restore onto NEW: `snapshot` (an id or its prefix) when given; else the newest of
    `from_host`; else the newest not taken by NEW itself (a replacement deployed before its restore has only
    a fresh ledger to back up: never restore that over the lost host's). RestoreError when there is none."""
    held = ", ".join(f"{h}: {sum(s.get('hostname') == h for s in snaps)}"
                     for h in sorted({s.get("hostname") or "?" for s in snaps})) or "none"
    if snapshot not in (None, "latest"):
        found = [s for s in snaps if s["id"].startswith(snapshot)]
        if len(found) != 1:
            raise RestoreError(f"snapshot {snapshot}: {'no' if not found else 'more than one'} snapshot of the "
                               f"repository has that id (snapshots per host: {held})")
        return found[0]
    if from_host:
        mine, whose = [s for s in snaps if s.get("hostname") == from_host], f"of {from_host}"
    else:
        mine, whose = [s for s in snaps if s.get("hostname") != new], f"of a host other than {new} (the lost one)"
    if not mine:
        raise RestoreError(f"no snapshot {whose} in the repository (snapshots per host: {held}); "
                           "name the lost host with --from-host or a snapshot with --snapshot")
    return max(mine, key=snapshot_time)


class Session:
    """Root commands on one host over one SSH login (sudo -n as the admin)."""

    def __init__(self, host: Host):
        self.name = host.name
        login = connect.resolve(host)
        self.sudo = login.sudo
        self.client = connect.open_client(host, login.user, port=login.port)

    def run(self, script: str, what: str) -> str:
        chan = self.client.get_transport().open_session(timeout=30)
        chan.settimeout(STEP_TIMEOUT)
        chan.exec_command(("sudo -n " if self.sudo else "") + "sh -c " + shlex.quote(script))
        chan.shutdown_write()
        out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
        rc = chan.recv_exit_status()
        chan.close()
        if rc != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-8:]
            raise RestoreError(f"{self.name}: {what} failed (exit {rc}): " + " | ".join(tail))
        return out.decode(errors="replace")

    def close(self):
        self.client.close()


def _audit_key_command(key_file: str) -> str:
    """The snapshot's audit key as NEW's audit-key credential (host+tpm2 key where there is a TPM)."""
    out = f"{CREDSTORE}/{CRED_PREFIX}{backup_job.AUDIT_KEY_CRED}"
    return (f"umask 077; k=host; [ -c /dev/tpmrm0 ] && k=host+tpm2; systemd-creds encrypt --with-key=$k "
            f"--name={backup_job.AUDIT_KEY_CRED} {key_file} {out}.tmp && mv -f {out}.tmp {out}")


def restore(inv: Inventory, new: str, snapshot: str | None = None, say=print, from_host: str | None = None) -> Outcome:
    host = next(h for h in inv.hosts if h.name == new)
    outcome = Outcome()
    t0 = time.monotonic()

    def step(name: str):
        outcome.timings.append((name, time.monotonic() - t0))
        say(f"{new}: {name} ({time.monotonic() - t0:.1f} s)")

    result = runner.deploy(inv, [host])
    if not result.ok:
        h = result.hosts.get(new)
        raise RestoreError(f"{new}: the deploy failed: {(h.failed or [h.error])[0] if h else 'no result'}")
    step("deployed")
    session = Session(host)
    try:
        snap_dir = f"{WORK}/run/hardkit-backup/snapshot"
        # NEW's own backups wait until it holds the lost host's ledger (the backup program refuses them too).
        session.run(f"systemctl stop {UNIT} {backup_data.BACKUP_TIMER}; rm -rf {WORK}; install -d -m 0700 {WORK}",
                    "stopping the bot and the backup timer")
        snaps = json.loads(session.run(backup_role.credentialed_command(host.data, "snapshots"),
                                       "listing the repository's snapshots"))
        chosen = choose_snapshot(snaps, new, from_host, snapshot)
        outcome.snapshot = describe(chosen)
        say(f"{new}: restoring snapshot {outcome.snapshot['id']} of {outcome.snapshot['host']}, taken "
            f"{outcome.snapshot['time']}")
        session.run(backup_role.credentialed_command(host.data, "restore", chosen["id"], WORK),
                    f"restoring snapshot {outcome.snapshot['id']}")
        step(f"snapshot {outcome.snapshot['id']} restored")
        key = f"{snap_dir}/{backup_job.KEYS_SUBDIR}/{backup_job.AUDIT_KEY_CRED}"
        session.run(_audit_key_command(key), "installing the snapshot's audit key")
        ledger = f"{snap_dir}/{backup_job.LEDGER_SUBDIR}"
        out = session.run(
            f"chmod 0711 {WORK} {WORK}/run {WORK}/run/hardkit-backup {snap_dir} && "
            f"chown -R {BOT_USER}: {ledger} {snap_dir}/{backup_job.KEYS_SUBDIR} && "
            f"setpriv --reuid={BOT_USER} --regid={BOT_USER} --clear-groups -- {CLI_LINK} restore --from {ledger} "
            f"--state-dir {STATE_DIR} --audit-key-file {key}", "restoring the ledger")
        outcome.restored = json.loads(out.strip().splitlines()[-1])
        step("ledger restored (integrity, latch and audit chain checked)")
        outcome.config_differs = session.run(
            f"cmp -s {WORK}{CONFIG_FILE} {CONFIG_FILE} && echo same || echo differs", "comparing the config"
        ).strip() == "differs"
        marker = json.dumps({**outcome.snapshot, "restored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        session.run(f"umask 077; printf '%s\\n' {shlex.quote(marker)} > {backup_data.RESTORED_MARKER} && "
                    f"systemctl start {backup_data.BACKUP_TIMER}", "recording the restore")
        session.run(f"rm -rf {WORK}; systemctl start {UNIT} && {wait_for_bot_command()}", "starting the bot")
        outcome.status = json.loads(session.run(f"{CLI_LINK} status --json --socket {CONTROL_SOCKET}",
                                                "reading the bot's state"))
        step(f"bot running: {outcome.status.get('state')}")
    finally:
        try:
            session.run(f"rm -rf {WORK}", "cleaning up")
        except (RestoreError, OSError, paramiko.SSHException):
            pass
        session.close()
    return outcome


def check(inv: Inventory, new: str, source: str) -> None:
    found = problems(inv, new, source)
    if found:
        raise InventoryError(inv.path, found)
