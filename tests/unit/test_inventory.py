"""Inventory validation: bad input is reported whole, before any host is touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy.inventory import InventoryError, load

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path):
    priv = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(priv)], check=True)
    return priv


def write(tmp_path, body: str) -> Path:
    path = tmp_path / "inv.py"
    path.write_text(textwrap.dedent(body))
    return path


def good_data(keys) -> str:
    return (f'{{"ssh_hostname": "127.0.0.1", "ssh_key": "{keys}", "admin_user": "ops", '
            f'"admin_keys": ["{keys}.pub"], "ssh_allow_from": ["10.0.2.2/32", "2001:db8::/32"]}}')


def test_valid_inventory_loads_with_groups(tmp_path, keys):
    path = write(tmp_path, f"""
        _d = {good_data(keys)}
        web = [("a", _d), ("b", {{**_d, "ssh_port": 2222}})]
        bots = [("b", {{**_d, "ssh_port": 2222}})]
        not_a_group = {{"x": 1}}
    """)
    inv = load(path)
    assert [h.name for h in inv.hosts] == ["a", "b"]
    assert inv.hosts[1].groups == ["web", "bots"]
    assert [h.name for h in inv.limit("bots")] == ["b"]
    assert [h.name for h in inv.limit("a,bots")] == ["a", "b"]


def test_every_problem_is_listed_at_once(tmp_path, keys):
    path = write(tmp_path, f"""
        _d = {good_data(keys)}
        hosts = [
            ("typo", {{**_d, "admin_usr": "ops"}}),
            ("cidr", {{**_d, "ssh_allow_from": ["10.0.0.1/8", "300.1.1.1", "2001:db8::/129"]}}),
            ("nokey", {{**_d, "ssh_key": "/nonexistent/key", "admin_keys": ["not a key"]}}),
            ("port", {{**_d, "ssh_port": 70000}}),
            ("root", {{**_d, "admin_user": "root"}}),
            ("user", {{**_d, "ssh_user": "root"}}),
            ("addr", {{**_d, "ssh_hostname": "999.1.1.1"}}),
            ("missing", {{"ssh_hostname": "127.0.0.1", "ssh_key": "{keys}"}}),
        ]
    """)
    with pytest.raises(InventoryError) as err:
        load(path)
    text = err.value.render()
    expected = [
        "typo: unknown key 'admin_usr' (did you mean 'admin_user'?)",
        "cidr: ssh_allow_from has malformed entries: '10.0.0.1/8'", "'300.1.1.1'", "'2001:db8::/129'",
        "nokey: ssh_key must be the path of an existing file", "'not a key' is neither a public key",
        "port: ssh_port must be a TCP port number",
        "root: admin_user must not be root",
        "user: ssh_user is chosen by hardkit",
        "addr: ssh_hostname '999.1.1.1' is not an IP address",
        "missing: missing required key 'admin_user'", "missing: missing required key 'admin_keys'",
        "missing: missing required key 'ssh_allow_from'",
    ]
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not reported in:\n{text}"
    assert len(err.value.problems) == 11  # one per host and key, none lost, none doubled


def test_unloadable_and_empty_inventories(tmp_path):
    with pytest.raises(InventoryError, match="cannot be loaded: SyntaxError"):
        load(write(tmp_path, "hosts = [\n"))
    with pytest.raises(InventoryError, match="defines no hosts"):
        load(write(tmp_path, "x = 1\n"))
    with pytest.raises(InventoryError, match="no such file"):
        load(tmp_path / "absent.py")


def test_private_key_listed_as_admin_key_is_refused(tmp_path, keys):
    path = write(tmp_path, f"""
        _d = {good_data(keys)}
        hosts = [("a", {{**_d, "admin_keys": ["{keys}"]}})]
    """)
    with pytest.raises(InventoryError, match="does not hold an OpenSSH public key"):
        load(path)


def test_unknown_limit_is_an_error_not_a_silent_no_op(tmp_path, keys):
    inv = load(write(tmp_path, f"hosts = [('a', {good_data(keys)})]\n"))
    with pytest.raises(InventoryError, match="no host or group named 'nosuch'"):
        inv.limit("nosuch")


def test_the_example_inventory_is_valid_once_its_keys_exist(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (home / ".ssh" / "known_hosts").write_text("")
    code = ("import sys; from deploy.inventory import load; inv = load('inventories/example.py'); "
            "print(','.join(h.name for h in inv.hosts))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "bot-fra-1,bot-ams-1"


def test_cli_rejects_bad_inventory_before_connecting(tmp_path, keys):
    # Port 9 on loopback: if the CLI tried to connect we would see a connection error instead.
    path = write(tmp_path, f"""
        _d = {good_data(keys)}
        hosts = [("a", {{**_d, "ssh_port": 9, "ssh_allow_from": ["nonsense"], "colour": "blue"}})]
    """)
    for verb in ("deploy", "verify"):
        res = subprocess.run([sys.executable, "-m", "deploy.cli", verb, str(path)], cwd=REPO,
                             capture_output=True, text=True)
        assert res.returncode == 2, res.stderr
        assert "2 problem(s)" in res.stderr and "'nonsense'" in res.stderr and "'colour'" in res.stderr
        assert "Traceback" not in res.stderr
