"""Backups without a lab: the program (roles/backup_job.py) against a real sshd on loopback with Debian's
restic, the rendered units through systemd's own validators, and the inventory's checks.

The sshd here stands in for the backup server's account as roles/backup_server.py configures it
(chrooted, forced internal-sftp, key restricted from= one address); the lab test proves the real one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deploy import inventory
from roles import backup, backup_data, backup_job, backup_server, firewall
from roles.auditors_data import UNIT_MAX_EXPOSURE
from roles.bot_paths import BOT_USER
from tests.unit.inventory_files import one_host_inventory

BOT_SRC = Path(__file__).resolve().parents[2] / "bot" / "src"
sys.path.insert(0, str(BOT_SRC))
from hardkit_bot import statefile  # noqa: E402
from hardkit_bot.model import TradingState  # noqa: E402
from hardkit_bot.store import LOSS_STREAK, Store  # noqa: E402


def need(*tools):
    missing = [t for t in tools if not shutil.which(t) and not Path(t).exists()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on the controller")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sftp_server(tmp_path):
    """A real sshd on 127.0.0.1 serving a chrooted, forced internal-sftp to one restricted key."""
    need("restic", "/usr/sbin/sshd", "setpriv")
    if os.geteuid() != 0:
        pytest.skip("sshd's ChrootDirectory needs root")
    d = tmp_path / "server"
    d.mkdir()
    # sshd refuses a chroot with a group- or world-writable component (as /tmp is): one under /run.
    chroot = Path(tempfile.mkdtemp(prefix="hardkit-test-chroot-", dir="/run"))
    os.chmod(chroot, 0o755)
    (chroot / "repos").mkdir()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation folder
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    client_pub = (d / "client_key.pub").read_text().split()
    (d / "authorized_keys").write_text(f'restrict,from="127.0.0.1" {client_pub[0]} {client_pub[1]}\n')
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\nUsePAM no\n"
        f"StrictModes no\nSubsystem sftp internal-sftp\nAllowUsers root\n"
        + "".join(f"{k} {v}\n" for k, v in backup_server.MATCH_SETTINGS
                  if k not in ("ChrootDirectory", "AuthorizedKeysFile", "ForceCommand"))
        + f"ChrootDirectory {chroot}\nForceCommand internal-sftp -d {backup_data.REPOS}\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=open(d / "sshd.log", "wb"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            time.sleep(0.05)
    host_key = " ".join((d / "host_key.pub").read_text().split()[:2])
    yield {"port": port, "host_key": host_key, "client_key": d / "client_key", "chroot": chroot, "dir": d}
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(chroot)


def _client(tmp_path, server, port=None, with_ledger=True, host="vps1", name="client"):
    """A VPS's side: config, credentials folder, a live ledger holding a latched state, a bot CLI; `host` is
    its name in the repository (snapshots are taken as it)."""
    c = tmp_path / name
    (c / "creds").mkdir(parents=True)
    (c / "creds" / "restic-password").write_text("correct horse battery staple")
    # As the secrets store keeps it (`hardkit secrets set` drops one final newline).
    (c / "creds" / "backup-ssh-key").write_bytes(server["client_key"].read_bytes().rstrip(b"\n"))
    (c / "creds" / "audit-key").write_bytes(b"k" * 32)
    for f in (c / "creds").iterdir():
        f.chmod(0o400)
    (c / "etc").mkdir()
    (c / "etc" / "bot.toml").write_text("# the bot's config\n")
    state = c / "state"
    state.mkdir()
    store = Store(state / "ledger.sqlite", time.time, b"k" * 32)
    store.set_meta(LOSS_STREAK, 4, audit_kind="streak")
    store.set_state(TradingState.HALTED, "loss streak 4", 1_800_000_000.0, TradingState.ACTIVE)
    store.set_meta("last_write", "still in the wal")
    cli = c / "hardkit-bot"
    cli.write_text(f"#!/bin/sh\nPYTHONPATH={BOT_SRC} exec {sys.executable} -m hardkit_bot \"$@\"\n")
    cli.chmod(0o755)
    (c / "known_hosts").write_text(f"[127.0.0.1]:{server['port']} {server['host_key']}\n")
    (c / "stage").mkdir()
    staged = c / "staged" / backup_job.LEDGER_SUBDIR
    if with_ledger:   # what the stage unit does before each run, as the bot's user: here the test's
        staged.mkdir(parents=True)
        res = subprocess.run(backup.stage_command(str(cli), str(state), str(staged)), capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
    config = {"repository": "sftp:root@127.0.0.1:/repos/vps1", "host": host,
              "restored_marker": str(c / "restored-from.json"), "port": port or server["port"],
              "known_hosts": str(c / "known_hosts"), "cache_dir": str(c / "cache"), "stage_dir": str(c / "stage"),
              "paths": [str(c / "etc")], "retention": {"last": 2},
              "ledger": {"staged": str(staged)} if with_ledger else None}
    (c / "backup.json").write_text(json.dumps(config))
    return c, store


def _job(c, *args):
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(c / "creds")}
    return subprocess.run([sys.executable, "-I", str(backup.PROGRAM_SOURCE), "--config", str(c / "backup.json"),
                           *args], capture_output=True, text=True, env=env, timeout=300)


def test_backup_restore_and_check_over_sftp(tmp_path, sftp_server):
    c, store = _client(tmp_path, sftp_server)
    try:
        for i in range(3):   # three runs: the retention (last 2) forgets one
            res = _job(c, "run")
            assert res.returncode == 0, res.stdout + res.stderr
            assert ("repository sftp:root@127.0.0.1:/repos/vps1 created" in res.stdout) == (i == 0)
    finally:
        store.close()
    snaps = json.loads(_job(c, "snapshots").stdout)
    assert len(snaps) == 2 and all("hardkit" in s["tags"] for s in snaps)
    # The server holds only restic's encrypted files: no ledger, no config in clear.
    stored = b"".join(p.read_bytes() for p in (sftp_server["chroot"] / "repos" / "vps1").rglob("*") if p.is_file())
    assert b"SQLite format 3" not in stored and b"the bot's config" not in stored
    assert _job(c, "check").returncode == 0
    out = tmp_path / "restored"
    assert _job(c, "restore", "latest", str(out)).returncode == 0
    ledger = next(out.rglob("ledger/ledger.sqlite"))
    copy = Store(ledger, time.time, b"k" * 32, readonly=True)
    try:
        assert copy.get_meta("last_write") == "still in the wal"
        assert copy.get_state()[0] is TradingState.HALTED and copy.latch_doubt is None
        assert copy.verify_audit(b"k" * 32).ok
    finally:
        copy.close()
    assert statefile.read(statefile.path_for(ledger)).state == "HALTED"
    assert next(out.rglob("keys/audit-key")).read_bytes() == b"k" * 32
    assert next(out.rglob("etc/bot.toml")).read_text() == "# the bot's config\n"
    assert not any((c / "stage").iterdir())   # the staging copy is gone after the run


def test_unreachable_server_fails_the_run_with_a_named_error(tmp_path, sftp_server):
    c, store = _client(tmp_path, sftp_server, port=_free_port())
    store.close()
    res = _job(c, "run")
    assert res.returncode == 1
    first = res.stderr.splitlines()[0]
    assert first.startswith("hardkit-backup: repository check failed"), res.stderr
    assert "Traceback" not in res.stderr
    assert "correct horse" not in res.stdout + res.stderr


def test_wrong_host_key_is_refused(tmp_path, sftp_server):
    c, store = _client(tmp_path, sftp_server)
    store.close()
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    (c / "known_hosts").write_text(f"[127.0.0.1]:{sftp_server['port']} "
                                   + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    res = _job(c, "run")
    assert res.returncode == 1 and "failed" in res.stderr.splitlines()[0]
    assert not (sftp_server["chroot"] / "repos" / "vps1").exists()


def test_check_config_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"repository": "local:/x", "host": "h", "restored_marker": "/m", "port": 22,
                               "known_hosts": "/k", "cache_dir": "/c", "stage_dir": "/s", "paths": ["relative"],
                               "retention": {"yearly": 1}, "ledger": None, "extra": 1}))
    res = subprocess.run([sys.executable, "-I", str(backup.PROGRAM_SOURCE), "check-config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "unknown key 'extra'" in res.stderr
    data = json.loads(bad.read_text())
    del data["extra"]
    bad.write_text(json.dumps(data))
    res = subprocess.run([sys.executable, "-I", str(backup.PROGRAM_SOURCE), "check-config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    for word in ("'relative' is not an absolute path", "'yearly'", "sftp: URL"):
        assert word in res.stderr


# --- the units ------------------------------------------------------------------------------------

VPS = {"backup_to": {"address": "198.51.100.102", "host_keys": [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]}}


@pytest.fixture
def unit_dir(tmp_path):
    need("systemd-analyze")
    program = tmp_path / "hardkit-backup"
    program.write_text(backup.PROGRAM_SOURCE.read_text())
    program.chmod(0o755)
    cli = tmp_path / "hardkit-bot"   # the bot's CLI as systemd-analyze verify needs it: an executable
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    for name, text in backup.render_units(VPS, program=str(program), cli=str(cli)).items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", [backup_data.BACKUP_UNIT, backup_data.BACKUP_TIMER, backup_data.CHECK_UNIT,
                                  backup_data.CHECK_TIMER, backup_data.STAGE_UNIT])
def test_units_pass_systemd_analyze_verify(unit_dir, unit):
    res = subprocess.run(["systemd-analyze", "verify", str(unit_dir / unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_each_unit_verifies_with_only_the_units_installed_before_it(tmp_path):
    """The deploy installs the units one by one, each checked by `systemd-analyze verify` first: a unit that
    requires one not installed yet fails its check (the backup's Requires= of the stage unit did, on a new host)."""
    need("systemd-analyze")
    cli = tmp_path / "hardkit-bot"
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    installed = tmp_path / "system"
    installed.mkdir()
    for name, text in backup.render_units(VPS, program=str(cli), cli=str(cli)).items():
        (installed / name).write_text(text)
        res = subprocess.run(["systemd-analyze", "verify", str(installed / name)], capture_output=True, text=True)
        assert res.returncode == 0 and not res.stderr.strip(), f"{name}: {res.stderr}"


@pytest.mark.parametrize("unit", [backup_data.BACKUP_UNIT, backup_data.CHECK_UNIT, backup_data.STAGE_UNIT])
def test_units_are_sandboxed_and_load_their_secrets_as_credentials(unit_dir, unit):
    text = (unit_dir / unit).read_text()
    for cred in backup_data.BACKUP_CREDENTIALS:
        assert (f"LoadCredentialEncrypted={cred}:" in text) == (unit != backup_data.STAGE_UNIT)
    assert "Environment=" not in text and "password" not in text.split("ExecStart=")[1].splitlines()[0]
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(unit_dir / unit)],
                         capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert score and float(score.group(1)) <= backup.EXPOSURE_MAX[unit], res.stdout[-800:]


def test_backup_units_are_held_to_the_kits_exposure_limit():
    """ext-units-01 holds every hardkit unit to audit_unit_max_exposure (2.0 by default): the backup's own
    limits (checked offline above) may not be looser, or a backed-up host fails the audit."""
    over = {u: m for u, m in backup.EXPOSURE_MAX.items() if m > UNIT_MAX_EXPOSURE.default}
    assert not over, f"above the kit's {UNIT_MAX_EXPOSURE.default}: {over}"


def test_firewall_lets_the_vps_reach_the_backup_server_ssh_only():
    conf = firewall.render({"ssh_allow_from": ["10.0.2.2/32"], **VPS})
    assert 'ip daddr { 198.51.100.102/32 } tcp dport 22 accept comment "hardkit backup server"' in conf
    assert "198.51.100.102" not in firewall.render({"ssh_allow_from": ["10.0.2.2/32"]})


def test_server_keys_are_restricted_to_the_clients():
    key = VPS["backup_to"]["host_keys"][0]
    text = backup_server.authorized_keys_text({"backup_server_clients": ["198.51.100.101/32", "2001:db8::/64"],
                                              "backup_server_keys": [key]})
    assert text == f'restrict,from="198.51.100.101/32,2001:db8::/64" {key} hardkit-backup-client\n'


# --- the inventory --------------------------------------------------------------------------------

def test_inventory_lists_every_backup_problem_at_once(tmp_path):
    inv = one_host_inventory(tmp_path)
    text = inv.read_text().replace('"ssh_allow_from": ["10.0.2.2/32"]}', (
        '"ssh_allow_from": ["10.0.2.2/32"], "backup_to": {"address": "not-an-ip", "host_keys": ["nokey"], '
        '"port": 0}, "backup_retention": {"yearly": 2}, "backup_interval_minutes": 1}'))
    text += ('servers = [("two", {"ssh_hostname": "127.0.0.2", "ssh_key": "%s", "admin_user": "ops", '
             '"admin_keys": ["%s.pub"], "ssh_allow_from": ["10.0.2.2/32"], "backup_server": True, '
             '"backup_server_clients": ["198.51.100.101/32"], "secrets_env": "prod", "backup_to": '
             '{"address": "198.51.100.9", "host_keys": ["%s.pub"]}})]\n') % ((tmp_path / "id_ed25519",) * 3)
    inv.write_text(text)
    with pytest.raises(inventory.InventoryError) as err:
        inventory.load(inv)
    problems = "\n".join(err.value.problems)
    for expected in ("one: backup_to address 'not-an-ip' is not an IP address",
                     "port must be 1-65535", "'nokey' is neither a public key",
                     "one: backup_retention must map", "one: backup_interval_minutes must be",
                     "two: backup_server is true but backup_server_keys is empty",
                     "two: backup_server_clients 198.51.100.101/32 not inside ssh_allow_from",
                     "two: backup_to is set but secrets environment 'prod' has no restic-password, backup-ssh-key"):
        assert expected in problems, problems
    res = subprocess.run([str(Path(sys.executable).parent / "hardkit"), "deploy", str(inv), "--dry"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_restore_lists_every_problem_of_the_request_before_touching_a_host(tmp_path):
    inv = one_host_inventory(tmp_path, address="127.0.0.9")   # nothing listens there: no host is touched
    text = inv.read_text().replace('"ssh_allow_from": ["10.0.2.2/32"]}', '"ssh_allow_from": ["10.0.2.2/32"], '
                                   '"bot_enabled": False}')
    inv.write_text(text)
    res = subprocess.run([str(Path(sys.executable).parent / "hardkit"), "restore", str(inv), "--host", "one",
                          "--from", "ghost"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    for expected in ("--host one: has no backup_to", "--host one: bot_enabled is false",
                     "--from 'ghost' is not in the inventory"):
        assert expected in res.stderr, res.stderr
    assert "deployed" not in res.stderr


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_the_ledger_is_staged_by_the_bots_user_offline_and_the_backup_holds_one_capability(unit_dir):
    """The ledger's copy is taken by its owner in a unit of its own (no capability, no network, no other user
    in view) that the backup requires and runs after; the backup unit keeps one capability, to read, and
    switches no user (it had SETUID, SETGID and CHOWN for that, and scored 2.1)."""
    stage = _settings((unit_dir / backup_data.STAGE_UNIT).read_text())
    assert stage["User"] == [BOT_USER] and stage["CapabilityBoundingSet"] == [""]
    assert stage["AmbientCapabilities"] == [""] and stage["PrivateNetwork"] == ["yes"]
    assert stage["RestrictAddressFamilies"] == ["none"] and stage["PrivateUsers"] == ["yes"]
    assert stage["ExecStart"][0].endswith(f" --to {backup.STAGED_LEDGER}")
    assert stage["StopWhenUnneeded"] == ["yes"] and stage["RemainAfterExit"] == ["yes"]   # the copy goes with it
    run = _settings((unit_dir / backup_data.BACKUP_UNIT).read_text())
    assert run["Requires"] == [backup_data.STAGE_UNIT] and run["After"][-1] == backup_data.STAGE_UNIT
    assert run["CapabilityBoundingSet"] == run["AmbientCapabilities"] == ["CAP_DAC_READ_SEARCH"]
    assert "setpriv" not in backup.PROGRAM_SOURCE.read_text()
    # Without the bot there is no ledger: no stage unit, nothing required.
    alone = backup.render_units({**VPS, "bot_enabled": False})
    assert backup_data.STAGE_UNIT not in alone and "Requires=" not in alone[backup_data.BACKUP_UNIT]


def test_a_missing_staged_ledger_fails_the_run_naming_the_stage_unit(tmp_path):
    stage_dir, creds = tmp_path / "stage", tmp_path / "creds"
    stage_dir.mkdir()
    creds.mkdir()
    config = {"stage_dir": str(stage_dir), "ledger": {"staged": str(tmp_path / "nothing")}}
    with pytest.raises(backup_job.Failed, match=backup_data.STAGE_UNIT):
        backup_job.stage(config)


# --- which snapshot a restore takes, and who may back up into a repository ----------------------------

def _snap(sid: str, host: str, when: str) -> dict:
    return {"id": sid * 8, "short_id": sid * 4, "hostname": host, "time": when, "tags": ["hardkit"]}


def test_restore_takes_the_lost_hosts_newest_snapshot_not_the_replacements_own():
    """The replacement (new) backed its fresh ledger up into the lost host's repository after the lost host's
    last backup: "latest" would be that one. The restore takes the lost host's newest and says which."""
    from deploy.restore import RestoreError, choose_snapshot, describe

    snaps = [_snap("a", "vps", "2026-12-04T08:00:00.123456789Z"),
             _snap("b", "vps", "2026-12-04T09:00:00.5+01:00"),          # 08:00:00.5 UTC: after a
             _snap("c", "vps", "2026-12-04T08:30:00.000000001+00:00"),  # the newest of vps
             _snap("d", "new", "2026-12-04T09:30:00+00:00")]            # the replacement's fresh ledger
    assert describe(choose_snapshot(snaps, "new")) == {"id": "cccc", "host": "vps",
                                                       "time": "2026-12-04T08:30:00.000000001+00:00"}
    assert choose_snapshot(snaps, "new", from_host="new")["id"] == "d" * 8
    assert choose_snapshot(snaps, "new", snapshot="aaaa")["id"] == "a" * 8
    assert choose_snapshot(snaps, "new", snapshot="latest")["id"] == "c" * 8
    with pytest.raises(RestoreError, match=r"no snapshot of a host other than new .*new: 1"):
        choose_snapshot(snaps[3:], "new")
    with pytest.raises(RestoreError, match="no snapshot of ghost .*new: 1, vps: 3"):
        choose_snapshot(snaps, "new", from_host="ghost")
    with pytest.raises(RestoreError, match="snapshot ffff: no snapshot"):
        choose_snapshot(snaps, "new", snapshot="ffff")


def test_a_replacement_does_not_back_up_into_a_lost_hosts_repository_until_restored(tmp_path, sftp_server):
    lost, store = _client(tmp_path, sftp_server, host="vps1")
    store.close()
    assert _job(lost, "run").returncode == 0
    new, store = _client(tmp_path, sftp_server, host="vps2", name="new")   # backup_to.repository: vps1
    store.close()
    res = _job(new, "run")
    assert res.returncode == 1 and "holds snapshots of vps1, none of vps2" in res.stderr.splitlines()[0], res.stderr
    assert [s["hostname"] for s in json.loads(_job(new, "snapshots").stdout)] == ["vps1"]
    (new / "restored-from.json").write_text('{"id": "x", "host": "vps1"}\n')   # what `hardkit restore` leaves
    res = _job(new, "run")
    assert res.returncode == 0, res.stderr
    assert sorted(s["hostname"] for s in json.loads(_job(new, "snapshots").stdout)) == ["vps1", "vps2"]
    (new / "restored-from.json").unlink()
    assert _job(new, "run").returncode == 0   # it has snapshots of its own there now


def test_the_first_backup_waits_for_the_timer_not_the_boot():
    """OnBootSec= elapses at once when the timer starts after it (a deploy on a host up for 5 min): the first
    run would land in the middle of the deploy, or of `hardkit restore` before the ledger is back."""
    timer = _settings(backup.render_units(VPS)[backup_data.BACKUP_TIMER])
    assert timer["OnActiveSec"] == ["5min"] and "OnBootSec" not in timer
