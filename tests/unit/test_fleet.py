"""Fleet deploys without a host: batch sizes, bad fleet input (every problem, exit 2, nothing
touched), groups with per-group data, the summary table and the per-host progress."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy import fleet
from deploy.inventory import load
from deploy.progress import HostProgress

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value,total,size", [(None, 12, 12), ("1", 12, 1), ("5", 12, 5), ("25%", 12, 3),
                                              ("10%", 12, 2), ("100%", 3, 3), ("50%", 1, 1)])
def test_batch_sizes(value, total, size):
    assert fleet.parse_batch(value, total) == size


def test_every_bad_fleet_option_is_listed():
    problems = fleet.input_problems("0%", -1, 0, 10)
    assert len(problems) == 3 and "--batch" in problems[0] and "--max-fail" in problems[1] and "--parallel" in problems[2]
    assert fleet.input_problems("two", 0, None, 5) and not fleet.input_problems("20%", 0, 4, 5)


@pytest.fixture
def key(tmp_path):
    priv = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(priv)], check=True)
    return priv


def test_groups_carry_per_group_data_and_a_host_overrides_it(tmp_path, key):
    path = tmp_path / "fleet.py"
    path.write_text(textwrap.dedent(f"""
        _base = {{"ssh_key": "{key}", "admin_user": "ops", "admin_keys": ["{key}.pub"],
                  "ssh_allow_from": ["10.0.2.2/32"]}}
        prod = ([("p1", {{"ssh_hostname": "192.0.2.1"}}), ("p2", {{"ssh_hostname": "192.0.2.2", "sshd_port": 2222}})],
                {{**_base, "sshd_port": 2200}})
        staging = ([("s1", {{"ssh_hostname": "192.0.2.9"}})], {{**_base}})
    """))
    inv = load(path)
    ports = {h.name: h.data.get("sshd_port") for h in inv.hosts}
    assert ports == {"p1": 2200, "p2": 2222, "s1": None}
    assert [h.name for h in inv.limit("prod")] == ["p1", "p2"] and [h.name for h in inv.limit("s1")] == ["s1"]


def test_bad_hosts_at_fleet_scale_are_all_listed_before_anything_is_touched(tmp_path, key):
    """Several bad hosts, several problems each: one run of the CLI names them all and exits 2.
    Every host with a usable address points at a loopback port of this test's own, listening:
    not one connection reaches any of them (the kernel would queue it even unanswered)."""
    import socket

    listeners = {}
    for name in ("ok1", "ok2", "bad2", "bad3"):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        listeners[name] = sock
    port = {n: s.getsockname()[1] for n, s in listeners.items()}
    path = tmp_path / "fleet.py"
    path.write_text(textwrap.dedent(f"""
        _base = {{"ssh_key": "{key}", "admin_user": "ops", "admin_keys": ["{key}.pub"],
                  "ssh_allow_from": ["10.0.2.2/32"], "ssh_hostname": "127.0.0.1"}}
        prod = [("ok1", {{**_base, "ssh_port": {port["ok1"]}}}),
                ("bad1", {{**_base, "ssh_hostname": "300.1.1.1", "sshd_port": 0}}),
                ("bad2", {{**_base, "ssh_port": {port["bad2"]}, "admin_user": "root", "ssh_allow_from": "any"}}),
                ("bad3", {{**_base, "ssh_port": {port["bad3"]}, "sshd_prot": 22}})]
        staging = [("ok2", {{**_base, "ssh_port": {port["ok2"]}}})]
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(path), "--batch", "0",
                              "--max-fail", "-1"], capture_output=True, text=True, cwd=str(REPO), env=env, timeout=60)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        for words in ("bad1: ssh_hostname", "bad1: sshd_port", "bad2: admin_user", "bad2: ssh_allow_from",
                      "bad3: unknown key 'sshd_prot'", "--batch", "--max-fail"):
            assert words in res.stderr, (words, res.stderr)
        assert "ok1" not in res.stderr and "ok2" not in res.stderr
        for name, sock in listeners.items():
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.accept()  # a connection from the deploy would be waiting here
    finally:
        for sock in listeners.values():
            sock.close()


def test_summary_marks_untouched_hosts_and_the_stop():
    rows = {"a": fleet.HostRow("a", 1, "ops (sudo)", 3, 100, 0, "pass"),
            "b": fleet.HostRow("b", 1, "", 0, 0, 0, "-", "b: cannot log in as the admin or the bootstrap user (x)"),
            "c": fleet.HostRow("c")}
    result = fleet.FleetResult(rows, stopped_after=1)
    lines = fleet.summary(result)
    assert lines[0].split()[:3] == ["host", "batch", "login"]
    assert "untouched" in next(line for line in lines if line.startswith("c "))
    assert "cannot log in" in next(line for line in lines if line.startswith("b "))
    assert lines[-1].startswith("stopped after batch 1") and lines[-1].endswith(": c")
    assert not result.ok and fleet.as_json(result)["hosts"]["c"]["batch"] is None


def test_progress_is_one_line_per_host_and_role_plus_every_error(capsys):
    import io

    out = io.StringIO()
    p = HostProgress(out)
    p.write("--> Starting operation: SSH | Install\n    [h1] No changes\n    [h2] Success\n")
    p.write("--> Starting operation: SSH | Config\n    [h1] Success\n    [h2] Error: it broke\n")
    p.write("--> Starting operation: Firewall | Rules\n    [h1] No changes\n")
    lines = out.getvalue().splitlines()
    assert lines == ["  h1: SSH (done 1, changed 0, failed 0)", "  h2: SSH (done 1, changed 1, failed 0)",
                     "  h2: SSH: Error: it broke", "  h1: Firewall (done 3, changed 1, failed 0)"]


def test_hosts_at_once_counts_overlapping_operations_only():
    from deploy import host_times

    lockstep_one_at_a_time = {"a": [[0, 1], [2, 3]], "b": [[1, 2], [3, 4]]}  # an end meets the next start
    assert host_times.peak_at_once(lockstep_one_at_a_time) == 1
    assert host_times.peak_at_once({"a": [[0, 2]], "b": [[1, 3]], "c": [[1.5, 1.6]]}) == 3
    assert host_times.peak_at_once({"a": [[0, 2]], "b": [[1, 3]], "c": [[2.5, 4]]}) == 2
    assert host_times.peak_at_once({}) == 0
    assert host_times.span([[3, 4], [1, 2]]) == (1, 4) and host_times.span([]) is None


def test_host_times_read_tolerates_a_run_that_wrote_nothing(tmp_path):
    from deploy import host_times

    assert host_times.read(tmp_path / "missing.json") == {}
    (tmp_path / "half.json").write_text('{"a": [[1')
    assert host_times.read(tmp_path / "half.json") == {}


def test_a_host_that_does_not_speak_ssh_is_reported_in_one_line(tmp_path, key):
    """A port that accepts and says nothing (a wrong port, a middlebox): the host is listed as
    unreachable in the summary, exit 1, and no traceback reaches the operator."""
    import socket
    import time

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        path = tmp_path / "fleet.py"
        path.write_text(f'prod = [("mute", {{"ssh_key": "{key}", "admin_user": "ops", "admin_keys": ["{key}.pub"], '
                        f'"ssh_allow_from": ["10.0.2.2/32"], "ssh_hostname": "127.0.0.1", '
                        f'"ssh_port": {mute.getsockname()[1]}}})]\n')
        env = dict(os.environ, PYTHONPATH=str(REPO))
        start = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(path)], capture_output=True, text=True,
                             cwd=str(REPO), env=env, timeout=300)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "Exception" not in res.stderr, res.stderr
    row = next(line for line in res.stderr.splitlines() if line.strip().startswith("mute "))
    assert "cannot log in" in row, res.stderr
    print(f"unreachable host reported in {time.monotonic() - start:.0f} s")
