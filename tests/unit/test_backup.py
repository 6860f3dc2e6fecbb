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


def _client(tmp_path, server, port=None, with_ledger=True):
    """A VPS's side: config, credentials folder, a live ledger holding a latched state, a bot CLI."""
    c = tmp_path / "client"
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
    config = {"repository": "sftp:root@127.0.0.1:/repos/vps1", "port": port or server["port"],
              "known_hosts": str(c / "known_hosts"), "cache_dir": str(c / "cache"), "stage_dir": str(c / "stage"),
              "paths": [str(c / "etc")], "retention": {"last": 2},
              "ledger": {"state_dir": str(state), "cli": str(cli), "user": "root"} if with_ledger else None}
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
    bad.write_text(json.dumps({"repository": "local:/x", "port": 22, "known_hosts": "/k", "cache_dir": "/c",
                               "stage_dir": "/s", "paths": ["relative"], "retention": {"yearly": 1},
                               "ledger": None, "extra": 1}))
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
    for name, text in backup.render_units(VPS, program=str(program)).items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", [backup_data.BACKUP_UNIT, backup_data.BACKUP_TIMER, backup_data.CHECK_UNIT,
                                  backup_data.CHECK_TIMER])
def test_units_pass_systemd_analyze_verify(unit_dir, unit):
    res = subprocess.run(["systemd-analyze", "verify", str(unit_dir / unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


@pytest.mark.parametrize("unit", [backup_data.BACKUP_UNIT, backup_data.CHECK_UNIT])
def test_units_are_sandboxed_and_load_their_secrets_as_credentials(unit_dir, unit):
    text = (unit_dir / unit).read_text()
    for cred in backup_data.BACKUP_CREDENTIALS:
        assert f"LoadCredentialEncrypted={cred}:" in text
    assert "Environment=" not in text and "password" not in text.split("ExecStart=")[1].splitlines()[0]
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(unit_dir / unit)],
                         capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert score and float(score.group(1)) <= backup.EXPOSURE_MAX[unit], res.stdout[-800:]


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


@pytest.fixture
def shared_tmp():
    """A folder other users may enter (pytest's own tmp_path is root's only)."""
    with tempfile.TemporaryDirectory(prefix="hardkit-backup-test-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


def test_the_bots_cli_runs_without_the_units_capabilities(shared_tmp):
    """The units run as their own user with ambient capabilities; a switch between two non-root users keeps
    ambient capabilities, so the program must drop them for the bot's CLI (which gets the ledger only)."""
    need("setpriv", "/usr/bin/python3")
    if os.geteuid() != 0:
        pytest.skip("needs root: it switches users as the unit does")
    tmp_path = shared_tmp
    stage_dir, state, creds = tmp_path / "stage", tmp_path / "state", tmp_path / "creds"
    for d in (stage_dir, state, creds):
        d.mkdir()
    shutil.chown(stage_dir, "nobody")
    (state / "ledger.sqlite").write_text("")
    (creds / backup_job.AUDIT_KEY_CRED).write_bytes(b"k" * 32)
    cli = tmp_path / "bot-cli"   # stands in for the bot's CLI: shows what it may do
    cli.write_text("#!/bin/sh\ngrep -E '^Cap(Prm|Eff|Amb):' /proc/self/status | tr '\\n' ' '\n")
    cli.chmod(0o755)
    config = {"stage_dir": str(stage_dir), "ledger": {"state_dir": str(state), "cli": str(cli), "user": "daemon"}}
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in backup.BACKUP_CAPS.split())  # the unit's
    code = (f"import sys; sys.path.insert(0, {str(Path(backup_job.__file__).parent)!r}); import backup_job; "
            f"backup_job.stage({config!r})")
    res = subprocess.run(["setpriv", "--securebits=+no_setuid_fixup", "--reuid=nobody", "--regid=nogroup",
                          "--clear-groups", f"--inh-caps={caps}", f"--ambient-caps={caps}", "--",
                          "/usr/bin/python3", "-I", "-c", code],
                         env={"CREDENTIALS_DIRECTORY": str(creds), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    shown = dict(re.findall(r"(Cap\w+):\s+([0-9a-f]+)", res.stdout))
    assert shown and all(int(v, 16) == 0 for v in shown.values()), res.stdout
