"""The reboot guard (roles/reboot_guard.py, installed as a file) as a module, with a scratch config.

What needs a host (the reboot itself, logind locks, the systemd unit) is proven by
tests/integration/test_os_baseline.py; here: required/held/stale/malformed logic and the JSON
status the compliance check reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from roles import reboot_guard, updates


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "reboot-guard.json"
    path.write_text(json.dumps({"inhibit_dir": str(tmp_path / "inhibit"), "state_file": str(tmp_path / "state" / "guard.json")}))
    return path


@pytest.fixture
def guard(tmp_path, monkeypatch, config_file):
    mod = reboot_guard
    monkeypatch.setattr(mod, "CONFIG_FILE", str(config_file))
    for name in ("INHIBIT_DIR", "STATE_FILE"):
        monkeypatch.setattr(mod, name, getattr(mod, name))  # restored after the test
    mod.configure(str(config_file))
    required_file = tmp_path / "reboot-required"
    monkeypatch.setattr(mod, "REQUIRED_FILE", str(required_file))
    monkeypatch.setattr(mod, "REQUIRED_PKGS", str(tmp_path / "reboot-required.pkgs"))
    monkeypatch.setattr(mod, "kernel_pending", lambda: None)
    monkeypatch.setattr(mod, "logind_holders", lambda: [])
    (tmp_path / "inhibit").mkdir()
    monkeypatch.setattr(mod, "required_file", required_file, raising=False)
    monkeypatch.setattr(mod, "inhibit", tmp_path / "inhibit", raising=False)
    return mod


def hold(guard, name: str, pid: int, **extra) -> None:
    entry = {"holder": name, "reason": "open position", "since": "2026-01-01T00:00:00+00:00", "pid": pid, **extra}
    (guard.inhibit / name).write_text(json.dumps(entry) + "\n")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_nothing_required(guard):
    assert guard.evaluate()["decision"] == "none-required"


def test_required_and_free(guard):
    guard.required_file.touch()
    state = guard.evaluate()
    assert state["decision"] == "reboot" and state["required"] and state["pending_since"]


def test_live_holder_holds(guard):
    guard.required_file.touch()
    hold(guard, "hardkit-bot", os.getpid())
    state = guard.evaluate()
    assert state["decision"] == "held" and state["holders"][0]["holder"] == "hardkit-bot"


def test_stale_holder_is_ignored_and_reported(guard):
    guard.required_file.touch()
    hold(guard, "hardkit-bot", dead_pid())
    state = guard.evaluate()
    assert state["decision"] == "reboot" and state["stale"][0]["holder"] == "hardkit-bot"


@pytest.mark.parametrize("content", ["not json\n", '{"holder": "x"}\n', '{"pid": "12"}\n', "[1, 2]\n", ""])
def test_unreadable_inhibitor_holds(guard, content):
    guard.required_file.touch()
    (guard.inhibit / "broken").write_text(content)
    assert guard.evaluate()["decision"] == "held"


def test_temporary_files_are_not_holders(guard):
    guard.required_file.touch()
    (guard.inhibit / ".hardkit-bot.tmp").write_text("{half")
    assert guard.evaluate()["decision"] == "reboot"


def test_pending_time_comes_from_the_marker(guard):
    guard.required_file.touch()
    old = guard.required_file.stat().st_mtime - 3 * 86400
    os.utime(guard.required_file, (old, old))
    (guard.required_file.parent / "reboot-required.pkgs").write_text("linux-image-6.1.0-99-amd64\nlibc6\n")
    state = guard.evaluate()
    assert 3 * 86400 - 5 <= state["pending_seconds"] <= 3 * 86400 + 60
    assert "libc6" in state["reasons"][0]


def test_run_waits_while_held_then_gives_up(guard, capsys):
    guard.required_file.touch()
    hold(guard, "hardkit-bot", os.getpid())
    assert guard.main(["run", "--max-wait", "0", "--poll", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "held by: hardkit-bot" in out and "window closed" in out
    saved = json.loads(open(guard.STATE_FILE).read())
    assert saved["decision"] == "held"


def test_run_dry_run_would_reboot(guard, capsys):
    guard.required_file.touch()
    assert guard.main(["run", "--dry-run"]) == 0
    assert "rebooting: required since" in capsys.readouterr().out
    assert json.loads(open(guard.STATE_FILE).read())["decision"] == "would-reboot"


def test_status_json(guard, capsys):
    guard.main(["status", "--json"])
    assert json.loads(capsys.readouterr().out)["decision"] == "none-required"


def test_the_installed_file_runs_alone_with_the_config_the_role_writes(tmp_path):
    """As on the host: the module file run by python3 in isolated mode (no hardkit on the path)."""
    config = tmp_path / "reboot-guard.json"
    config.write_text(updates.guard_config())
    assert json.loads(config.read_text()) == {"inhibit_dir": updates.INHIBIT_DIR, "state_file": updates.GUARD_STATE}
    tool = [sys.executable, "-I", str(updates.GUARD_SOURCE)]
    assert subprocess.run([*tool, "check-config", str(config)], capture_output=True).returncode == 0
    scratch = tmp_path / "scratch.json"
    scratch.write_text(json.dumps({"inhibit_dir": str(tmp_path / "none"), "state_file": str(tmp_path / "s.json")}))
    res = subprocess.run([*tool, "--config", str(scratch), "status", "--json"], capture_output=True, text=True)
    assert res.returncode == 0 and json.loads(res.stdout)["holders"] == [], res.stderr


@pytest.mark.parametrize("content,words", [
    ("{not json", ["cannot read a JSON object"]),
    ('["a"]', ["must be a JSON object"]),
    ('{"inhibit_dir": "relative", "extra": 1}', ["inhibit_dir must be an absolute path", "state_file must be",
                                                 "unknown key 'extra'"]),
])
def test_a_bad_config_is_one_line_exit_2_with_every_problem(tmp_path, content, words):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for args in (["check-config", str(bad)], ["--config", str(bad), "status"]):
        res = subprocess.run([sys.executable, "-I", str(updates.GUARD_SOURCE), *args], capture_output=True, text=True)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert all(w in res.stderr for w in words) and "Traceback" not in res.stderr
