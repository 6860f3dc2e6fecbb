"""The lab degrades with a sentence, not a traceback, when this machine lacks something."""

from __future__ import annotations

import os

import pytest

from deploy import cli


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def empty_path(monkeypatch, tmp_path):
    """A PATH with none of the lab's tools on it (the tools really are looked up on PATH)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HARDKIT_LAB_DIR", str(tmp_path / "lab"))


@pytest.mark.parametrize("argv,needs", [
    (["sandbox", "image"], "mmdebstrap"),
    (["sandbox", "up", "--name", "errs"], "systemd-nspawn"),
    (["sandbox", "up", "--name", "errs", "--tier", "vm"], "qemu-system-x86_64"),
])
def test_missing_tools_are_named_with_the_package_to_install(capsys, empty_path, argv, needs):
    if os.geteuid() != 0:
        pytest.skip("as non-root the root check speaks first (tested below)")
    code, err = run_cli(capsys, *argv)
    assert code == 1
    assert needs in err and "apt-get install -y" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["sandbox", "image"], ["sandbox", "up"], ["sandbox", "up", "--tier", "vm"]])
def test_not_root_is_a_clear_error(capsys, monkeypatch, tmp_path, argv):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HARDKIT_LAB_DIR", str(tmp_path / "lab"))
    code, err = run_cli(capsys, *argv)
    assert code == 1 and "needs root" in err and "Traceback" not in err


def test_up_without_an_image_says_how_to_build_it(capsys, monkeypatch, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to get past the root check")
    monkeypatch.setenv("HARDKIT_LAB_DIR", str(tmp_path / "lab"))
    code, err = run_cli(capsys, "sandbox", "up", "--name", "noimg")
    assert code == 1 and "hardkit sandbox image" in err
    from sandbox import network
    assert not [ns for ns in network.list_netns() if "-noimg-" in ns], "a refused up must create nothing"


def test_bad_lab_name_and_count(capsys):
    assert run_cli(capsys, "sandbox", "up", "--name", "Bad_Name")[1].count("lowercase") == 1
    code, err = run_cli(capsys, "sandbox", "up", "--count", "0")
    assert code == 1 and "--count" in err


def test_unknown_target_for_ssh(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HARDKIT_LAB_DIR", str(tmp_path / "lab"))
    code, err = run_cli(capsys, "sandbox", "ssh", "nosuch-1")
    assert code == 1 and "no lab target named 'nosuch-1'" in err


def test_inotify_limit_is_raised_never_lowered(tmp_path):
    """A dozen booted containers exhaust Debian's 128 inotify instances: the lab raises the limit, never lowers it."""
    from sandbox.host import raise_inotify_limit

    low, high = tmp_path / "low", tmp_path / "high"
    low.write_text("128\n")
    high.write_text("8192\n")
    assert raise_inotify_limit(low, minimum=1024) == 1024 and low.read_text() == "1024\n"
    assert raise_inotify_limit(high, minimum=1024) == 8192 and high.read_text() == "8192\n"
