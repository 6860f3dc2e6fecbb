"""Encrypted backups: the inventory keys of a backed-up VPS and of a backup server, and their shared names.

A VPS with `backup_to` runs restic on a timer (roles/backup.py) into its own repository on a backup
server over SFTP; a host with `backup_server: true` (roles/backup_server.py) keeps those repositories
for a dedicated SFTP-only, chrooted account whose keys only work from the listed client addresses.
restic encrypts everything client-side: the server never sees the repository password.
"""

from __future__ import annotations

import ipaddress
import re

from roles.access_data import SSH_ALLOW_FROM
from roles.data import DataKey, is_bool, is_network_list, is_public_key_list, read_public_key
from roles.secrets_data import BACKUP_CREDENTIALS, missing_secrets

#: The secrets (secrets/<env>/<name>.age) a backed-up VPS needs, delivered as encrypted credentials:
#: the restic repository password and the private SSH key of the backup account (ed25519, OpenSSH format).
RESTIC_PASSWORD, BACKUP_SSH_KEY = BACKUP_CREDENTIALS

#: The backup server's account: SFTP only, chrooted into CHROOT, one repository folder per VPS under REPOS.
ACCOUNT = "hardkit-backup"
CHROOT = "/srv/hardkit-backup"
#: Inside the chroot (what the client's repository path says); on the server it is CHROOT + REPOS.
REPOS = "/repos"

#: Units on the VPS (failing units are alerted on by the notifier: kind `backup` and `backup-check`).
BACKUP_UNIT = "hardkit-backup.service"
BACKUP_TIMER = "hardkit-backup.timer"
CHECK_UNIT = "hardkit-backup-check.service"
CHECK_TIMER = "hardkit-backup-check.timer"
#: Where the bot's ledger is staged before a backup (when the bot runs here): a unit of its own, run as the
#: bot's user with no capability and no network, that the backup unit requires and runs after. Its
#: RuntimeDirectory= (LEDGER_STAGE_DIR) holds the copy until the backup unit is done (StopWhenUnneeded=).
STAGE_UNIT = "hardkit-backup-stage.service"
LEDGER_STAGE_DIR = "/run/hardkit-backup-stage"
#: The backup units' service user on a VPS (no shell, no home): not root. Its one capability (the backup
#: unit's ambient set) reads the root-only files backed up and the ledger the stage unit left.
#: Not ACCOUNT: that is the backup server's SFTP account, and one host may be both.
BACKUP_USER = "hardkit-backup-run"
#: The host-side program and its config (roles/backup_job.py), and the backup server's known host keys.
PROGRAM = "/usr/local/sbin/hardkit-backup"
CONFIG_FILE = "/etc/hardkit/backup.json"
KNOWN_HOSTS = "/etc/hardkit/backup-known-hosts"
#: restic's cache (CacheDirectory=) and the snapshot's staging folder (RuntimeDirectory=, emptied each run):
#: the ledger as staged and the audit key, at the same paths in every snapshot (`hardkit restore` reads them).
CACHE_DIR = "/var/cache/hardkit-backup"
STAGE_DIR = "/run/hardkit-backup"
#: Written by `hardkit restore` on the host it restored (which snapshot, whose, when; in the deploy's record
#: folder, backed up with it): until then a host does not back up into a repository that holds only other
#: hosts' snapshots (roles/backup_job.py).
RESTORED_MARKER = "/var/lib/hardkit/restored-from.json"

_REPO_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_TARGET_KEYS = {"address", "port", "host_keys", "repository"}


def _check_target(v) -> str | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - _TARGET_KEYS or "address" not in v or "host_keys" not in v:
        return ("must be {'address': IP, 'host_keys': [the server's host key lines or .pub files], 'port': 22, "
                f"'repository': NAME}} (port and repository optional), not {v!r}")
    problems = []
    try:
        ipaddress.ip_address(str(v["address"]))
    except ValueError:
        problems.append(f"address {v['address']!r} is not an IP address")
    port = v.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"port must be 1-65535, not {port!r}")
    if "repository" in v and not (isinstance(v["repository"], str) and _REPO_RE.match(v["repository"])):
        problems.append(f"repository must be a folder name (lowercase letters, digits, . _ -), not {v['repository']!r}")
    err = is_public_key_list(v["host_keys"])
    if err:
        problems.append(f"host_keys {err}")
    return "; ".join(problems) or None


def _is_minutes(lo: int, hi: int):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"must be a whole number of minutes between {lo} and {hi}, not {v!r}"
    return check


def _check_retention(v) -> str | None:
    if not isinstance(v, dict) or not v or set(v) - set(RETENTION_FLAGS) or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in v.values()):
        return (f"must map some of {', '.join(RETENTION_FLAGS)} to a count >= 1, e.g. "
                f"{{'hourly': 24, 'daily': 7}}, not {v!r}")
    return None


#: restic forget's --keep-* flag for each retention key.
RETENTION_FLAGS = {"last": "--keep-last", "hourly": "--keep-hourly", "daily": "--keep-daily",
                   "weekly": "--keep-weekly", "monthly": "--keep-monthly"}

BACKUP_TO = DataKey(
    "backup_to", None,
    "Back this host up with restic over SFTP to a backup server (a host with backup_server: true): "
    "{'address': the server's IP as this host reaches it, 'host_keys': [its SSH host public keys, literal or "
    ".pub files], 'port': its sshd_port (default 22), 'repository': folder name (default: this host's inventory "
    "name)}. Needs secrets_env holding " + " and ".join(BACKUP_CREDENTIALS) + ". The firewall lets this host "
    "reach that address and port, nothing more. Unset: no backups.",
    _check_target)
BACKUP_INTERVAL = DataKey(
    "backup_interval_minutes", 60,
    "Minutes between backups (the worst-case data loss, RPO, is this plus one backup's run time).",
    _is_minutes(5, 1440))
BACKUP_CHECK_INTERVAL = DataKey(
    "backup_check_interval_minutes", 1440,
    "Minutes between `restic check` runs of the repository's structure (a failed check fails "
    + CHECK_UNIT + ").", _is_minutes(60, 10080))
BACKUP_RETENTION = DataKey(
    "backup_retention", {"last": 12, "hourly": 48, "daily": 14, "weekly": 8, "monthly": 12},
    "Snapshots kept after each backup (restic forget --prune): counts per last/hourly/daily/weekly/monthly. "
    "Default: the last 12, and 48 hourly, 14 daily, 8 weekly, 12 monthly (hourly keeps one per hour: 'last' keeps "
    "the runs of a shorter interval).",
    _check_retention)
BACKUP_SERVER = DataKey(
    "backup_server", False,
    "This host keeps the backup repositories of other hosts: a " + ACCOUNT + " account, SFTP only, chrooted in "
    + CHROOT + ", its keys valid only from backup_server_clients. Its SSH allow-list (ssh_allow_from) must "
    "include those clients.", is_bool)
BACKUP_SERVER_CLIENTS = DataKey(
    "backup_server_clients", [],
    "Addresses (CIDRs) the backed-up hosts connect from: the from= of every backup key.",
    lambda v: None if v == [] else is_network_list(v))
BACKUP_SERVER_KEYS = DataKey(
    "backup_server_keys", [],
    "Public keys (literal or .pub files) of the backed-up hosts' " + BACKUP_SSH_KEY + " secrets.",
    lambda v: None if v == [] else is_public_key_list(v))

KEYS = [BACKUP_TO, BACKUP_INTERVAL, BACKUP_CHECK_INTERVAL, BACKUP_RETENTION, BACKUP_SERVER, BACKUP_SERVER_CLIENTS,
        BACKUP_SERVER_KEYS]


def target(data) -> dict | None:
    """backup_to with its defaults filled in (None when the host is not backed up)."""
    v = BACKUP_TO.value(data)
    return None if v is None else {"port": 22, **v}


def repository(data, host_name: str) -> str:
    """The restic repository URL of a backed-up host."""
    t = target(data)
    return f"sftp:{ACCOUNT}@{_bracket(t['address'])}:{REPOS}/{t.get('repository', host_name)}"


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def known_hosts_text(data) -> str:
    """The backup server's host keys as an OpenSSH known_hosts file for its address and port."""
    t = target(data)
    name = t["address"] if t["port"] == 22 else f"[{t['address']}]:{t['port']}"
    keys = [" ".join(read_public_key(k).split()[:2]) for k in t["host_keys"]]
    return "".join(f"{name} {k}\n" for k in keys)


def egress_rules(data) -> list[dict]:
    """The firewall's outbound rule for the backup server (roles/firewall.py adds it to egress_allow)."""
    t = target(data)
    if t is None:
        return []
    net = ipaddress.ip_network(t["address"])
    return [{"proto": "tcp", "port": t["port"], "to": [str(net)], "comment": "hardkit backup server"}]


def host_problems(data) -> list[str]:
    """How the backup keys fit together, found before any host is touched (every problem at once)."""
    problems = []
    if target(data) is not None:
        problems += missing_secrets(data, BACKUP_CREDENTIALS, "backup_to is set")
    if BACKUP_SERVER.value(data):
        clients, keys = BACKUP_SERVER_CLIENTS.value(data), BACKUP_SERVER_KEYS.value(data)
        if not clients:
            problems.append("backup_server is true but backup_server_clients is empty: list the addresses the "
                            "backed-up hosts connect from")
        if not keys:
            problems.append("backup_server is true but backup_server_keys is empty: list the public keys of the "
                            f"backed-up hosts' {BACKUP_SSH_KEY}")
        allowed = [ipaddress.ip_network(n) for n in SSH_ALLOW_FROM.value(data) or []]
        outside = [c for c in clients
                   if not any(ipaddress.ip_network(c).version == a.version and ipaddress.ip_network(c).subnet_of(a)
                              for a in allowed)]
        if outside:
            problems.append(f"backup_server_clients {', '.join(outside)} not inside ssh_allow_from: the firewall "
                            "would drop the backups")
    elif BACKUP_SERVER_CLIENTS.value(data) or BACKUP_SERVER_KEYS.value(data):
        problems.append("backup_server_clients/backup_server_keys are set but backup_server is not true")
    return problems
