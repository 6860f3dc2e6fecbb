"""A deploy whose secrets cannot all be decrypted stops before any host is touched.

The inventory's host is a loopback port with a real listener that counts connections: every
refusal below must leave it at zero, exit 2, and say what is wrong in one line per problem.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.unit.test_secrets_cli import Kit, keygen

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener():
    """A TCP port on 127.0.0.1 that counts the connections it accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    seen, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            seen.append(1)
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1], seen
    stop.set()
    t.join()
    sock.close()


@pytest.fixture
def kit(tmp_path):
    k = Kit(tmp_path)
    assert k.run("init", "prod").returncode == 0
    assert k.run("set", "prod", "exchange-api-key", value=b"key").returncode == 0
    return k


def inventory(tmp_path: Path, port: int, second_env: bool = False, **data) -> Path:
    """One host (two with second_env: the second names the missing env 'staging')."""
    key = tmp_path / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    base = {"ssh_hostname": "127.0.0.1", "ssh_port": port, "ssh_key": str(key), "admin_user": "ops",
            "admin_keys": [str(key) + ".pub"], "ssh_allow_from": ["127.0.0.1/32"], **data}
    path = tmp_path / "inv.py"
    hosts = f"('vps-1', {base!r})" + (f", ('vps-2', {{**{base!r}, 'secrets_env': 'staging'}})" if second_env else "")
    path.write_text(f"vps = [{hosts}]\n")
    return path


def deploy(kit: Kit, inv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(inv), *args], cwd=REPO,
                          capture_output=True, text=True, env=kit.env, timeout=120)


def refused(res: subprocess.CompletedProcess, lines: int, *words: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    said = res.stderr.strip().splitlines()
    assert len(said) == lines and all(line.startswith("error: ") for line in said), res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


def test_wrong_identity_is_one_line_and_no_connection(kit, tmp_path, listener):
    port, seen = listener
    other = tmp_path / "other.txt"
    keygen(other)
    inv = inventory(tmp_path, port, secrets_env="prod")
    refused(deploy(kit, inv, "--identity", str(other)), 1, "other.txt", "not a recipient", "recipients.txt")
    refused(deploy(kit, inv, "--identity", str(tmp_path / "missing.txt")), 1, "missing.txt", "no age identity")
    assert seen == [], "no host may be contacted"


def test_every_problem_is_listed_at_once(kit, tmp_path, listener):
    port, seen = listener
    (kit.root / "prod" / "exchange-api-secret.age").write_bytes(b"age-encryption.org/v1\nbroken")
    assert kit.run("set", "prod", "audit-key", value=b"x").returncode == 0
    inv = inventory(tmp_path, port, secrets_env="prod", second_env=True)
    refused(deploy(kit, inv), 3, "exchange-api-secret.age", "damaged", "audit-key",
            "no secrets environment 'staging'", "hardkit secrets init staging")
    assert seen == []


def test_a_bad_env_name_is_an_inventory_error(kit, tmp_path, listener):
    port, seen = listener
    res = deploy(kit, inventory(tmp_path, port, secrets_env="../prod"))
    assert res.returncode == 2 and "secrets_env must name a folder of secrets/" in res.stderr, res.stderr
    assert seen == []


def test_hosts_without_secrets_need_no_identity(kit, tmp_path):
    """No secrets_env: the identity is not even read (paper mode and the demo need none)."""
    from deploy.credentials import wanted_credentials
    from deploy.inventory import load

    os.environ["HARDKIT_AGE_IDENTITY"] = str(tmp_path / "nothing-here.txt")
    try:
        inv = load(inventory(tmp_path, 1))
        assert wanted_credentials(inv.hosts) == {"vps-1": {}}
    finally:
        del os.environ["HARDKIT_AGE_IDENTITY"]


def test_a_cut_credential_state_report_decides_nothing():
    """Read as "nothing recorded", a report cut short would re-send every credential: it is an error."""
    from deploy.credentials import STATE_END, DeliveryError, _parse_state

    full = f"salt {'ab' * 32}\ndigest exchange-api-key {'cd' * 32}\nfile exchange-api-key\n{STATE_END}\n"
    salt, recorded, present = _parse_state(full, "vps-1")
    assert salt == bytes.fromhex("ab" * 32) and recorded == {"exchange-api-key": "cd" * 32}
    assert present == {"exchange-api-key"}
    with pytest.raises(DeliveryError, match="vps-1: incomplete credential state"):
        _parse_state(full.rsplit(STATE_END, 1)[0], "vps-1")
