"""A backup server: restic repositories of other hosts, behind a chrooted, SFTP-only account.

The host is hardened like any other (the kit's SSH, firewall with its allow-list, which must include
the backed-up hosts: backup_data.host_problems checks it). On top, for backup_server: true:
- a system account ACCOUNT with no shell and a locked password, in a group of its own that sshd's
  AllowGroups admits (roles/ssh.py adds it);
- an sshd Match block for it: chrooted into CHROOT (root-owned, as sshd requires), forced
  `internal-sftp` starting in REPOS, no TTY, no forwarding of any kind, key only;
- its keys in a root-owned file (AUTHORIZED_KEYS), each `restrict` and valid only `from=` the
  backup_server_clients.
The server never holds a repository password: restic encrypts on the clients.

Usage: ``roles.backup_server.apply()``; ``sshd_match_block(data)`` is read by roles/ssh.py.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from roles.admin import lock_password
from roles.backup_data import (ACCOUNT, BACKUP_SERVER, BACKUP_SERVER_CLIENTS, BACKUP_SERVER_KEYS, CHROOT, REPOS)
from roles.data import read_public_key
from roles.ops import install_file

#: Root-owned: the account can neither read nor change who may log in as it.
AUTHORIZED_KEYS = "/etc/ssh/hardkit-backup.authorized_keys"
#: No shell: sshd's ForceCommand runs internal-sftp in-process, so the account needs none.
SHELL = "/usr/sbin/nologin"

#: The sshd settings of the Match block (the compliance check reads `sshd -T -C user=ACCOUNT` against them).
MATCH_SETTINGS = [
    ("ChrootDirectory", CHROOT),
    ("ForceCommand", f"internal-sftp -d {REPOS}"),
    ("AuthorizedKeysFile", AUTHORIZED_KEYS),
    ("AuthenticationMethods", "publickey"),
    ("PermitTTY", "no"),
    ("DisableForwarding", "yes"),
]


def enabled(data) -> bool:
    return bool(BACKUP_SERVER.value(data))


def ssh_groups(data) -> list[str]:
    """Groups sshd's AllowGroups must also admit on this host."""
    return [ACCOUNT] if enabled(data) else []


def sshd_match_block(data) -> list[str]:
    """sshd_config lines (after the Include, with the other Match blocks) for the backup account."""
    if not enabled(data):
        return []
    return ["# The backup account: SFTP only, chrooted, key only (roles/backup_server.py).",
            f"Match User {ACCOUNT}", *[f"    {k} {v}" for k, v in MATCH_SETTINGS], ""]


def authorized_keys_text(data) -> str:
    """One line per client key: `restrict` and valid only from the backup clients' addresses."""
    source = ",".join(BACKUP_SERVER_CLIENTS.value(data))
    return "".join(f'restrict,from="{source}" {" ".join(read_public_key(k).split()[:2])} hardkit-backup-client\n'
                   for k in BACKUP_SERVER_KEYS.value(data))


@deploy("Backup server (chrooted SFTP account)")
def backup_server():
    data = host.data
    if not enabled(data):
        files.file(name="Not a backup server: no backup account keys", path=AUTHORIZED_KEYS, present=False)
        return
    server.group(name=f"Group {ACCOUNT}", group=ACCOUNT, system=True)
    server.user(name=f"System user {ACCOUNT}: no shell, SFTP only", user=ACCOUNT, group=ACCOUNT, system=True,
                shell=SHELL, home=CHROOT, create_home=False, ensure_home=False)
    lock_password(name=f"Keep {ACCOUNT}'s password locked", user=ACCOUNT)
    files.directory(name="The chroot (root-owned, as sshd requires)", path=CHROOT, user="root", group="root",
                    mode="755")
    files.directory(name="The repositories (the account's only writable folder)", path=f"{CHROOT}{REPOS}",
                    user=ACCOUNT, group=ACCOUNT, mode="700")
    install_file(name="The backup account's keys (restricted, from the clients only)", dest=AUTHORIZED_KEYS,
                 mode="0644", content=authorized_keys_text(data))


apply = backup_server
