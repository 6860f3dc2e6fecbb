"""Lockout-proof apply: validate, apply with a timed automatic revert, confirm with a fresh login.

Changing sshd or the firewall over the very SSH connection they govern is how operators lock
themselves out (dev-sec #187/#663/#854, konstruktoid #991). So a guarded change:

1. uploads the new files to a staging folder and runs the real validators on them
   (a failed validation leaves the live files untouched and fails the deploy);
2. `hardkit-guard apply` backs up the live files, arms a transient systemd timer that puts
   them back, moves the staged files into place and reloads the service;
3. the controller opens a **new** SSH connection as the admin (paramiko, as pyinfra) and,
   through it, runs `hardkit-guard confirm`, which cancels the revert.

If step 3 fails — the new config rejects us, the firewall drops new connections, the
controller dies — the host reverts by itself when the timer fires, and a boot unit reverts
any change still unconfirmed at boot. The deploy fails with a message that says so.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from io import BytesIO
from pathlib import Path

import paramiko
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand, deploy, operation
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, systemd

from roles.access_data import FIXED_PORT_KEY
from roles.data import DataKey
from roles.ops import Lines, note_managed

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "guard"
GUARD_BIN = "/usr/local/sbin/hardkit-guard"
STAGED_DIR = "/var/lib/hardkit/staged"
BOOT_UNIT = "hardkit-guard-boot.service"

REVERT_SECONDS = DataKey(
    "guard_revert_seconds", 90,
    "Seconds a guarded change (sshd, firewall) stays in force without a confirming fresh login "
    "before the host puts the previous configuration back by itself.",
    lambda v: None if isinstance(v, int) and 15 <= v <= 3600 else f"must be an integer 15-3600, not {v!r}")

#: Test hook: HARDKIT_FAULT=confirm-fails:<change id> makes that change's confirming login fail
#: for real (it logs in as a user that does not exist), so the host-side revert can be proven.
FAULT_ENV = "HARDKIT_FAULT"

KEYS = [REVERT_SECONDS]


@deploy("Guard for risky changes")
def install_guard():
    files.directory(name="hardkit staging folder", path=STAGED_DIR, user="root", group="root", mode="700")
    files.put(name="Install hardkit-guard", src=str(TEMPLATES / "hardkit-guard.sh"), dest=GUARD_BIN,
              user="root", group="root", mode="755")
    unit = files.put(name="Install the boot-time revert of unconfirmed changes", src=str(TEMPLATES / BOOT_UNIT),
                     dest=f"/etc/systemd/system/{BOOT_UNIT}", user="root", group="root", mode="644")
    systemd.daemon_reload(name="Reload systemd for the new unit", _if=unit.did_change)
    systemd.service(name="Enable the boot-time revert", service=BOOT_UNIT, enabled=True)


apply = install_guard


@operation()
def guarded_change(change_id: str, contents: dict[str, str], modes: dict[str, str], validate: list[str],
                   reload: str, revert_seconds: int, confirm_user: str, confirm_sshd_port: int):
    """
    Apply `contents` (live path -> text) under the guard; no-op when every file already matches.

    + change_id: short name of the change (ssh, firewall); one pending change per id
    + contents: the desired text of each live file
    + modes: octal mode per live file (owner is root:root)
    + validate: commands run on the staged files first; `{staged}` is the staging folder
    + reload: command that makes the service read the new files
    + revert_seconds: how long the change waits for a confirming fresh login
    + confirm_user: who the fresh login is (the admin)
    + confirm_sshd_port: the sshd port the fresh login goes to (the new one during a port move)
    """
    from pyinfra import host

    stage = f"{STAGED_DIR}/{change_id}"
    for path, text in contents.items():
        note_managed(path, text.encode())
    changed = [path for path, text in contents.items()
               if host.get_fact(Sha256File, path=path) != hashlib.sha256(text.encode()).hexdigest()]
    if not changed:
        # In force but never confirmed (the controller died between apply and confirm): the host
        # would put the old configuration back when its timer fires. Confirm it with a fresh login now.
        if change_id in host.get_fact(Lines, command=f"{GUARD_BIN} pending 2>/dev/null || true"):
            yield FunctionCommand(confirm_with_fresh_login,
                                  (change_id, confirm_user, confirm_sshd_port, revert_seconds), {})
            return
        host.noop(f"{change_id}: configuration already in force")
        return
    yield StringCommand("mkdir", "-p", "-m", "700", stage)
    for path, text in contents.items():
        staged = stage + path
        yield StringCommand("mkdir", "-p", os.path.dirname(staged))
        yield FileUploadCommand(BytesIO(text.encode()), staged,
                                remote_temp_filename=host.get_temp_filename(staged))
        yield StringCommand("chown", "root:root", staged)
        yield StringCommand("chmod", modes.get(path, "644"), staged)
    for command in validate:
        yield StringCommand("sh", "-c", shlex.quote(command.format(staged=stage)))
    yield StringCommand(GUARD_BIN, "apply", change_id, str(revert_seconds), shlex.quote(reload),
                        *sorted(contents))
    yield FunctionCommand(confirm_with_fresh_login, (change_id, confirm_user, confirm_sshd_port, revert_seconds), {})


def confirm_with_fresh_login(state, host, change_id: str, user: str, sshd_port: int, revert_seconds: int) -> None:
    """Open a new SSH connection as `user` to `sshd_port` and confirm the change through it (never the old one)."""
    from deploy import connect
    from deploy.inventory import Host

    fault = os.environ.get(FAULT_ENV, "")
    login_user = "hardkit-fault-no-such-user" if fault == f"confirm-fails:{change_id}" else user
    data = {k: host.data.get(k) for k in ("ssh_hostname", "ssh_port", "ssh_key", "ssh_known_hosts_file",
                                           "ssh_strict_host_key_checking", "ssh_forwarded_ports",
                                           FIXED_PORT_KEY)}
    target = Host(host.name, [], {k: v for k, v in data.items() if v is not None})
    port = connect.connect_port(target.data, sshd_port)
    # sshd re-executes itself on reload and a loaded host (a software-CPU VM) may answer slowly: keep
    # trying until shortly before the host's own revert would fire.
    deadline = time.monotonic() + min(120.0, max(10.0, revert_seconds - 20.0))
    while True:
        try:
            _confirm_once(target, login_user, change_id, port)
            return
        except Exception as e:  # any failure means: we cannot (yet) prove the new config lets us back in
            # A refused key is an answer, not a hiccup: only connection trouble is worth another try.
            transient = not isinstance(e, paramiko.AuthenticationException)
            if transient and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise GuardError(
                f"{host.name}: a fresh SSH login as {login_user!r} (sshd port {sshd_port}) failed after applying the "
                f"{change_id} change "
                f"({type(e).__name__}: {e}). The host puts the previous {change_id} configuration back by itself "
                f"within {revert_seconds}s; the deploy stopped here.") from None


def _confirm_once(target, user: str, change_id: str, port: int) -> None:
    from deploy import connect

    client = connect.open_client(target, user, timeout=15, port=port)
    try:
        rc, _, err = connect.run(client, f"sudo -n {GUARD_BIN} confirm {shlex.quote(change_id)}", timeout=60)
    finally:
        client.close()
    if rc != 0:
        raise RuntimeError(f"confirm command failed ({rc}): {err.strip()}")


class GuardError(Exception):
    pass
