"""Encrypted backups as they run: the VPS's timers, units and credentials in force and its last backup's
result; the backup server's account as sshd applies it. Expected values come from roles/backup*.py."""

from __future__ import annotations

import json
import time

import pytest

from roles import backup as role
from roles import backup_data, backup_server
from roles.bot_config import BOT_ENABLED
from roles.bot_paths import BOT_USER
from tests.compliance import os_state

UNITS = [backup_data.BACKUP_UNIT, backup_data.BACKUP_TIMER, backup_data.CHECK_UNIT, backup_data.CHECK_TIMER]


def _client(target):
    if backup_data.target(target.data) is None:
        pytest.skip("backup_to is not set for this host: it is not backed up")


def _server(target):
    if not backup_server.enabled(target.data):
        pytest.skip("backup_server is not true for this host: it keeps no backups")


def _units(target):
    return target.fact("backup-units", lambda t: os_state.units(t, UNITS))


@pytest.mark.control("hk-bak-01")
def test_backup_timers_run(target):
    """The backup and repository-check timers are enabled and active on a backed-up host"""
    _client(target)
    units = _units(target)
    for timer in (backup_data.BACKUP_TIMER, backup_data.CHECK_TIMER):
        assert units[timer]["UnitFileState"] == "enabled", f"{timer}: {units[timer]}"
        assert units[timer]["ActiveState"] == "active", f"{timer}: {units[timer]}"


@pytest.mark.control("hk-bak-02")
def test_backup_secrets_are_encrypted_credentials(target):
    """The backup units read the repository password and the SSH key only as encrypted credentials, whose
    ciphertexts exist; neither appears in the program's config"""
    _client(target)
    wanted = dict(role.credentials(target.data))
    for unit in (backup_data.BACKUP_UNIT, backup_data.CHECK_UNIT):
        # `systemctl show` prints LoadCredentialEncrypted as [unprintable]: the unit as systemd loaded it instead.
        shown = target.check_output(f"systemctl cat {unit}")
        for name in backup_data.BACKUP_CREDENTIALS:
            assert f"LoadCredentialEncrypted={name}:{wanted[name]}" in shown.splitlines(), f"{unit}: {shown}"
        env = target.check_output(f"systemctl show -p Environment {unit}")
        assert env.strip() == "Environment=", f"{unit}: {env}"
    for name in backup_data.BACKUP_CREDENTIALS:
        head = target.check_output(f"head -c 64 {wanted[name]} | od -c | head -3")
        assert "PRIVATE KEY" not in head, f"{wanted[name]} is not a systemd-creds ciphertext"
    config = json.loads(target.check_output(f"cat {backup_data.CONFIG_FILE}"))
    assert set(config) == set(role.job_config(target.data, target.name)), config


@pytest.mark.control("hk-bak-03")
def test_last_backup_succeeded_in_time(target):
    """The last backup run succeeded, no longer ago than twice the backup interval"""
    _client(target)
    out = target.check_output(f"systemctl show -p Result -p ExecMainExitTimestampMonotonic -p ExecMainStatus "
                              f"{backup_data.BACKUP_UNIT}; cat /proc/uptime")
    props = os_state.key_values(out, "=")
    ended = int(props.get("ExecMainExitTimestampMonotonic") or 0)
    assert ended > 0, f"{backup_data.BACKUP_UNIT} has not run since boot"
    assert props["Result"] == "success" and props["ExecMainStatus"] == "0", f"the last backup failed: {props}"
    uptime = float(out.strip().splitlines()[-1].split()[0])
    age = uptime - ended / 1e6
    limit = 2 * backup_data.BACKUP_INTERVAL.value(target.data) * 60
    assert age <= limit, f"the last backup ended {age:.0f} s ago (> {limit} s)"


#: What `systemctl show` says of each unit's privileges (roles/backup.py: BACKUP_CAPS, STAGE_SANDBOX).
PRIVILEGES = ("User", "CapabilityBoundingSet", "AmbientCapabilities", "PrivateNetwork", "PrivateUsers",
              "RestrictAddressFamilies", "Requires")


def _privileges(target) -> dict[str, dict[str, str]]:
    def read(t):
        units = (backup_data.BACKUP_UNIT, backup_data.STAGE_UNIT)
        out = t.check_output(f"systemctl show -p Id -p LoadState {' '.join(f'-p {p}' for p in PRIVILEGES)} "
                             + " ".join(units))
        blocks = [os_state.key_values(b, "=") for b in out.split("\n\n") if b.strip()]
        return {b.get("Id"): b for b in blocks}
    return target.fact("backup-privileges", read)


@pytest.mark.control("hk-bak-05")
def test_backup_privileges_in_force(target):
    """The backup unit holds one capability (to read what it backs up) and switches no user; the bot's ledger
    is staged before it by the bot's user, with no capability, no network and no other user in view"""
    _client(target)
    shown = _privileges(target)
    run, stage = shown[backup_data.BACKUP_UNIT], shown[backup_data.STAGE_UNIT]
    caps = role.BACKUP_CAPS.lower()
    assert run.get("User") == backup_data.BACKUP_USER, run
    assert run.get("CapabilityBoundingSet") == caps and run.get("AmbientCapabilities") == caps, run
    if not BOT_ENABLED.value(target.data):
        assert stage.get("LoadState") == "not-found", f"{backup_data.STAGE_UNIT} without a bot: {stage}"
        return
    assert backup_data.STAGE_UNIT in run.get("Requires", "").split(), run
    assert stage.get("User") == BOT_USER, stage
    assert stage.get("CapabilityBoundingSet", "") == "" and stage.get("AmbientCapabilities", "") == "", stage
    assert stage.get("PrivateNetwork") == "yes" and stage.get("PrivateUsers") == "yes", stage
    # `none` is an empty allow-list, shown empty (no restriction at all shows as "~").
    assert stage.get("RestrictAddressFamilies", "") == "", stage


@pytest.mark.control("hk-bak-04")
def test_backup_account_is_chrooted_sftp_only(target):
    """The backup server's account has no shell, and sshd chroots it into internal-sftp with its keys only
    valid from the backup clients"""
    _server(target)
    entry = target.check_output(f"getent passwd {backup_data.ACCOUNT}").strip().split(":")
    assert entry[6] == backup_server.SHELL, entry
    t = target.check_output(f"sshd -T -C user={backup_data.ACCOUNT},host=203.0.113.1,addr=203.0.113.1")
    shown = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in t.splitlines() if " " in line}
    for key, value in backup_server.MATCH_SETTINGS:
        if key == "DisableForwarding":
            continue  # sshd -T shows its effect instead (the forwarding settings, all "no")
        assert shown.get(key.lower()) == value, f"{key}: sshd applies {shown.get(key.lower())!r}, expected {value!r}"
    for key in ("allowtcpforwarding", "allowagentforwarding", "x11forwarding", "allowstreamlocalforwarding"):
        assert shown.get(key) == "no", f"{key}: {shown.get(key)}"
    keys = target.check_output(f"cat {backup_server.AUTHORIZED_KEYS}")
    assert keys == backup_server.authorized_keys_text(target.data), keys
    assert all(line.startswith('restrict,from="') for line in keys.splitlines())
