"""roles/ops.py install_file: the staged copy gets its owner and mode, is validated and renamed in one
command after the upload; a failed step stops the rest and leaves the live file as it was.

Real shell, real pyinfra (its @local connector runs the same command path the SSH one does).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

import pytest

from roles import ops
from tests.unit.pyinfra_local import local_state, run_all


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "STAGING_DIR", str(tmp_path / "staging"))
    if os.geteuid() != 0:  # `install -d -o root` needs root; the rest is the same for any user
        pytest.skip("install_file's staging folder is root's")
    return local_state()[0]


def _run(state, monkeypatch, **kwargs):
    """Run one install_file; return the round-trips it took (commands and uploads, in order)."""
    from pyinfra.api.host import Host
    from pyinfra.api.operation import add_op

    me, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
    add_op(state, ops.install_file, user=me, group=group, **kwargs)
    trips = []
    run, put = Host.run_shell_command, Host.put_file
    monkeypatch.setattr(Host, "run_shell_command", lambda self, *a, **k: trips.append("command") or run(self, *a, **k))
    monkeypatch.setattr(Host, "put_file", lambda self, *a, **k: trips.append("upload") or put(self, *a, **k))
    run_all(state)
    monkeypatch.setattr(Host, "run_shell_command", run)
    monkeypatch.setattr(Host, "put_file", put)
    return trips


def test_a_new_file_is_installed_with_its_mode_in_three_round_trips(local, tmp_path, monkeypatch):
    dest = tmp_path / "etc" / "app.conf"
    trips = _run(local, monkeypatch, name="install", content="key = 1\n", dest=str(dest), mode="0640",
                          validate="grep -q '^key' {path}")
    assert dest.read_text() == "key = 1\n" and stat.S_IMODE(dest.stat().st_mode) == 0o640
    # (facts first, then) folders, the upload, then owner/mode + validation + rename as one command
    assert trips.count("upload") == 1 and trips[trips.index("upload") - 1:] == ["command", "upload", "command"]
    assert not os.listdir(tmp_path / "staging")
    assert not local.failed_hosts


def test_a_failed_validation_leaves_the_live_file_and_skips_the_rename(local, tmp_path, monkeypatch):
    dest = tmp_path / "app.conf"
    dest.write_text("old\n")
    dest.chmod(0o600)
    _run(local, monkeypatch, name="install", content="broken\n", dest=str(dest), mode="0644", validate="grep -q '^key' {path}")
    assert dest.read_text() == "old\n" and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not os.listdir(tmp_path / "staging")  # the staged copy was removed
    assert local.failed_hosts


def test_a_failed_step_stops_the_later_ones_with_its_status(tmp_path):
    steps = ops._all_or_stop(["false", "echo validated > " + str(tmp_path / "v"), "echo renamed > " + str(tmp_path / "r")])
    import subprocess

    assert subprocess.run(["sh", "-c", steps]).returncode == 1
    assert not (tmp_path / "v").exists() and not (tmp_path / "r").exists()
    assert subprocess.run(["sh", "-c", ops._all_or_stop(["true", "exit 3", "true"])]).returncode == 3
