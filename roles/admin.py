"""The named admin: the only account that may log in over SSH, with its keys and sudo.

Comes before the SSH role, so that when root's login is switched off the admin already
exists: the first deploy connects as root (as the provider hands the VPS over), later ones
as the admin. The admin's password stays locked: access is by key only, and sudo needs no
password (unattended deploys could not type one; the key is the credential).
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api import StringCommand, deploy, operation
from pyinfra.operations import apt, files, server

from roles.access_data import ADMIN_KEYS, ADMIN_USER
from roles.data import read_public_key
from roles.ops import install_file
from roles.second_factor_data import automation_networks, enabled

#: Members of this group, and only they, may log in over SSH (sshd AllowGroups).
SSH_GROUP = "ssh-users"
#: A service account's shell and home (service_account): none, as Debian's convention for service users.
NO_SHELL = "/usr/sbin/nologin"
NO_HOME = "/nonexistent"
SUDOERS_FILE = "/etc/sudoers.d/hardkit-admin"
#: sudo's own hardening, for every sudo user: a pty (no escaping the session), a log of commands.
SUDO_DEFAULTS = ["use_pty", "logfile=/var/log/sudo.log", "!log_input", "!log_output"]

KEYS: list = []


def sudoers_text(admin: str) -> str:
    lines = ["# Managed by hardkit: the admin may run anything via sudo; no password (key-only account)."]
    lines += [f"Defaults {d}" for d in SUDO_DEFAULTS]
    lines += [f"{admin} ALL=(ALL:ALL) NOPASSWD: ALL"]
    return "\n".join(lines) + "\n"


def authorized_keys_text(keys: list[str], options: str = "") -> str:
    """One line per key, each with the same authorized_keys `options` (e.g. `from="..."`) when given."""
    prefix = options + " " if options else ""
    return "".join(prefix + read_public_key(k) + "\n" for k in keys)


def admin_authorized_keys_text(data) -> str:
    """The admin's keys; with second_factor_admins set the admin is the automation account, and its keys
    work only from automation_from (`from=`), where sshd's Match block lets the key alone in."""
    options = f'from="{",".join(automation_networks(data))}"' if enabled(data) else ""
    return authorized_keys_text(ADMIN_KEYS.value(data), options)


@deploy("Admin access")
def admin_access():
    from pyinfra import host

    admin = ADMIN_USER.value(host.data)
    apt.packages(name="Install sudo", packages=["sudo"])
    server.group(name=f"Group {SSH_GROUP} (SSH logins)", group=SSH_GROUP, system=True)
    server.user(name=f"Admin user {admin}", user=admin, shell="/bin/bash", home=f"/home/{admin}",
                create_home=True, groups=[SSH_GROUP], append=True)
    lock_password(name=f"Keep {admin}'s password locked (key-only)", user=admin)
    files.directory(name=f"{admin}'s .ssh", path=f"/home/{admin}/.ssh", user=admin, group=admin, mode="700")
    files.put(name=f"{admin}'s authorized keys (exactly the inventory's)",
              src=StringIO(admin_authorized_keys_text(host.data)),
              dest=f"/home/{admin}/.ssh/authorized_keys", user=admin, group=admin, mode="600")
    install_file(name="sudoers rule for the admin (checked with visudo)", content=sudoers_text(admin),
                 dest=SUDOERS_FILE, mode="0440", validate="visudo -cf {path}")


@operation()
def lock_password(user: str):
    """
    Lock `user`'s password (`!` in shadow) unless it already is; SSH stays key-only either way.

    + user: the account
    """
    from pyinfra import host
    from pyinfra.facts.server import Command

    status = host.get_fact(Command, command=f"passwd -S {user} 2>/dev/null || true") or ""
    fields = status.split()
    if len(fields) > 1 and fields[1] == "L":
        host.noop(f"{user}'s password is locked")
        return
    yield StringCommand("usermod", "-p", "'!'", user)


apply = admin_access


def service_account(user: str, why: str = "no shell, no home") -> None:
    """A system user and its own group for a service: no shell, no home, password locked (its units run
    as it; nobody logs in as it). `why` completes the operation's name."""
    server.group(name=f"Group {user}", group=user, system=True)
    server.user(name=f"System user {user}: {why}", user=user, group=user, system=True, shell=NO_SHELL,
                home=NO_HOME, create_home=False, ensure_home=False)
    lock_password(name=f"Keep {user}'s password locked", user=user)
