"""AIDE and rkhunter as configured by roles/integrity.py, checked with the real tools on this machine.

The rendered configs go through `aide --config-check` and `rkhunter --config-check` (with Debian's
own rkhunter.conf beside the local file, as on the host), the units through `systemd-analyze`, and
hardkit-aide (roles/aide_tool.py) runs the real `aide` over a scratch tree with a config made by the
same template: a baseline, a change it must name, a content change it must not report, a refresh.
What needs a host (the timer, the deploy's refresh, rkhunter's scan) is proven by
tests/integration/test_integrity.py.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from roles import aide_tool, integrity
from roles import integrity_data as d
from roles.auditors_data import UNIT_MAX_EXPOSURE
from roles.ops import render

#: rkhunter must see the real /tmp, /dev, network and kernel modules (its unit says why), which costs
#: exposure a scanner that may hide nothing cannot avoid; every other hardkit unit keeps to 2.0.
RKHUNTER_MAX_EXPOSURE = 2.3


def need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed on this machine (scripts/setup-host.sh installs it)")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- the rendered configs, through the real validators ----------------------------------------------

def test_aide_conf_passes_aides_own_check(tmp_path):
    need("aide")
    conf = tmp_path / "aide.conf"
    conf.write_text(integrity.aide_conf({"admin_user": "ops"}))
    res = run(["aide", "--config-check", "--config", str(conf)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_aide_conf_watches_the_system_the_bot_and_peoples_keys_not_its_ledger():
    text = integrity.aide_conf({"admin_user": "ops"})
    selections = {line.split()[0] for line in text.splitlines() if line.startswith("/")}
    for path in ("/usr/bin", "/usr/sbin", "/etc", "/opt/hardkit-bot", "/etc/hardkit-bot", "/home/ops/.ssh"):
        assert d.aide_path_regex(path) in selections, path
    assert not any(s.startswith("/var") for s in selections), selections
    assert "=/etc/resolv\\.conf$ HardkitPerms" in text  # DHCP rewrites it: owner and mode only
    assert f"database_in=file:{d.AIDE_DB}" in text


def test_a_broken_aide_conf_is_refused(tmp_path):
    need("aide")
    conf = tmp_path / "aide.conf"
    conf.write_text(integrity.aide_conf({"admin_user": "ops"}).replace("HardkitFile = p+", "HardkitFile = nosuch+"))
    assert run(["aide", "--config-check", "--config", str(conf)]).returncode != 0


def rkhunter_check(tmp_path, local: str) -> subprocess.CompletedProcess:
    need("rkhunter")
    if not os.path.exists("/etc/rkhunter.conf"):
        pytest.skip("Debian's /etc/rkhunter.conf is missing (package rkhunter)")
    shutil.copy("/etc/rkhunter.conf", tmp_path / "rkhunter.conf")
    (tmp_path / "rkhunter.conf.local").write_text(local)
    return run(["rkhunter", "--config-check", "--nolog", "--configfile", str(tmp_path / "rkhunter.conf")])


@pytest.mark.parametrize("container", [False, True])
def test_rkhunter_local_conf_passes_rkhunters_own_check(tmp_path, container):
    res = rkhunter_check(tmp_path, render("integrity/rkhunter.conf.local.j2", container=container))
    assert res.returncode == 0, res.stdout + res.stderr


def test_rkhunter_check_catches_a_bad_local_conf(tmp_path):
    res = rkhunter_check(tmp_path, render("integrity/rkhunter.conf.local.j2", container=False) +
                         "SCRIPTWHITELIST=/no/such/file\n")
    assert res.returncode != 0 and "/no/such/file" in res.stdout + res.stderr


def test_rkhunter_exceptions_each_carry_a_reason_and_no_test_is_switched_off():
    lines = render("integrity/rkhunter.conf.local.j2", container=False).splitlines()
    assert not any(line.startswith(("DISABLE_TESTS", "ENABLE_TESTS")) for line in lines)
    for i, line in enumerate(lines):
        if line.startswith(("SCRIPTWHITELIST", "ALLOWHIDDEN", "ALLOWDEV", "ALLOWPROC", "RTKT_")):
            assert lines[i - 1].startswith("#") or lines[i - 1].startswith(line.split("=")[0]), \
                f"exception without a reason above it: {line}"
    assert 'WEB_CMD=/bin/false' in lines and "UPDATE_MIRRORS=0" in lines and 'MAIL-ON-WARNING=""' in lines


def test_on_a_declared_container_only_the_kernel_module_tests_are_off():
    """A container has no /proc/modules and, its kernel image purged (hk-os-kern-05), no /lib/modules: the
    kernel is the provider's. Those two tests, with their reason, nothing else; a VM keeps both."""
    lines = render("integrity/rkhunter.conf.local.j2", container=True).splitlines()
    switched = [line for line in lines if line.startswith(("DISABLE_TESTS", "ENABLE_TESTS"))]
    assert switched == ["DISABLE_TESTS=loaded_modules avail_modules"]
    why = " ".join(lines[lines.index(switched[0]) - 5:lines.index(switched[0])])
    assert "/proc/modules" in why and "/lib/modules" in why, "the exception must say why"
    vm = render("integrity/rkhunter.conf.local.j2", container=False).splitlines()
    assert not [line for line in vm if line.startswith(("DISABLE_TESTS", "ENABLE_TESTS"))]


def test_rkhunter_defaults_keep_its_cron_jobs_off_and_its_apt_hook_on(tmp_path):
    path = tmp_path / "rkhunter"
    path.write_text(render("integrity/rkhunter.defaults.j2", values=d.RKHUNTER_DEFAULT_VALUES,
                           scan_timer=d.RKHUNTER_SCAN_TIMER))
    res = run(["sh", "-c", f". {path} && echo $CRON_DAILY_RUN $CRON_DB_UPDATE $APT_AUTOGEN"])
    assert res.stdout.split() == ["false", "false", "true"], res.stdout + res.stderr


@pytest.fixture
def unit_dir(tmp_path):
    need("systemd-analyze")
    tool = tmp_path / "hardkit-aide"
    tool.write_text(integrity.AIDE_TOOL_SOURCE.read_text())
    tool.chmod(0o755)
    when = {"calendar": integrity.calendar({}), "delay": d.CHECK_DELAY_MINUTES}
    units = {
        d.AIDE_CHECK_UNIT: render("integrity/hardkit-aide-check.service.j2", tool=str(tool), conf=d.AIDE_CONF,
                                  db=d.AIDE_DB, state=d.AIDE_DPKG_STATE, state_dir=d.AIDE_DIR),
        d.RKHUNTER_SCAN_UNIT: render("integrity/hardkit-rkhunter-scan.service.j2"),
        d.AIDE_CHECK_TIMER: render(f"integrity/{d.AIDE_CHECK_TIMER}.j2", **when),
        d.RKHUNTER_SCAN_TIMER: render(f"integrity/{d.RKHUNTER_SCAN_TIMER}.j2", **when),
    }
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", [d.AIDE_CHECK_UNIT, d.RKHUNTER_SCAN_UNIT, d.AIDE_CHECK_TIMER, d.RKHUNTER_SCAN_TIMER])
def test_units_pass_systemd_analyze_verify(unit_dir, unit):
    if unit == d.RKHUNTER_SCAN_UNIT:
        need("rkhunter")
    res = run(["sh", "-c", integrity.UNIT_CHECK.replace("{path}", str(unit_dir / unit))])
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("unit,limit", [(d.AIDE_CHECK_UNIT, UNIT_MAX_EXPOSURE.default),
                                        (d.RKHUNTER_SCAN_UNIT, RKHUNTER_MAX_EXPOSURE)])
def test_units_are_sandboxed(unit_dir, unit, limit):
    res = run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(unit_dir / unit)])
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert score and float(score.group(1)) <= limit, res.stdout[-800:]


def test_every_unit_maps_to_an_alert_kind():
    assert d.ALERT_KINDS == {"hardkit-aide-check.service": "integrity", "hardkit-rkhunter-scan.service": "rootkit"}


def test_check_time_key_rejects_bad_values():
    assert d.AIDE_CHECK_TIME.check("25:00") and d.AIDE_CHECK_TIME.check(530)
    assert d.AIDE_CHECK_TIME.check(d.AIDE_CHECK_TIME.default) is None


# --- hardkit-aide with the real aide over a scratch tree ---------------------------------------------

@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A watched tree, its AIDE config made by the role's template, and the tool's command line."""
    need("aide")
    tree, db_dir = tmp_path / "tree", tmp_path / "db"
    (tree / "bin").mkdir(parents=True)
    db_dir.mkdir()
    (tree / "bin" / "login").write_text("#!/bin/sh\necho genuine\n")
    (tree / "bin" / "ls").write_text("#!/bin/sh\necho ls\n")
    (tree / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    db = db_dir / "aide.db"
    conf = tmp_path / "aide.conf"
    conf.write_text(render("integrity/aide.conf.j2", check_unit="x", db=str(db), db_new=f"{db}.new",
                           excluded={d.aide_path_regex(str(tree / "scratch")) + "$": "test"},
                           perms_only={d.aide_path_regex(str(tree / "resolv.conf")): "DHCP"},
                           watched=[d.aide_path_regex(str(tree))]))
    log = tmp_path / "dpkg.log"
    log.write_text("")
    monkeypatch.setattr(aide_tool, "DPKG_LOG", str(log))
    argv = ["--conf", str(conf), "--db", str(db), "--state", str(db_dir / "dpkg.json")]

    def tool(command):
        return aide_tool.main([*argv, command])
    tool.tree, tool.db, tool.log = tree, db, log
    return tool


def test_baseline_is_root_only_and_a_clean_tree_checks_clean(scratch, capsys):
    assert scratch("baseline") == 0
    assert stat.S_IMODE(os.stat(scratch.db).st_mode) == 0o600
    assert scratch("check") == 0
    assert "no change" in capsys.readouterr().out


def test_check_names_exactly_the_changed_file_first_and_fails(scratch, capsys):
    scratch("baseline")
    (scratch.tree / "bin" / "login").write_text("#!/bin/sh\necho backdoor\n")
    (scratch.tree / "resolv.conf").write_text("nameserver 198.51.100.53\n")  # DHCP's business: not reported
    (scratch.tree / "scratch").write_text("excluded\n")
    capsys.readouterr()
    assert scratch("check") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("AIDE: 1 file(s) differ")
    assert lines[1] == f"changed: {scratch.tree / 'bin' / 'login'}"
    assert not any("resolv.conf" in line or "scratch" in line for line in lines[:3])


def test_added_and_removed_files_are_named(scratch, capsys):
    scratch("baseline")
    (scratch.tree / "bin" / "ls").unlink()
    (scratch.tree / "bin" / "sshd-helper").write_text("dropped\n")
    capsys.readouterr()
    assert scratch("check") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == [f"added: {scratch.tree / 'bin' / 'sshd-helper'}", f"removed: {scratch.tree / 'bin' / 'ls'}"]


def test_a_refresh_takes_the_tree_in_and_says_what(scratch, capsys):
    scratch("baseline")
    (scratch.tree / "bin" / "ls").write_text("#!/bin/sh\necho ls v2\n")
    capsys.readouterr()
    assert scratch("baseline") == 0
    assert f"taken in: changed: {scratch.tree / 'bin' / 'ls'}" in capsys.readouterr().out
    assert scratch("check") == 0
    assert stat.S_IMODE(os.stat(scratch.db).st_mode) == 0o600


def test_check_without_a_baseline_is_an_error(scratch, capsys):
    assert scratch("check") == 2
    assert "no baseline" in capsys.readouterr().err


def test_a_package_dpkg_installed_is_taken_in_only_for_files_dpkg_vouches_for(scratch, monkeypatch, capsys):
    """dpkg's log says `tool` was upgraded: its files are taken in if their digests match the package's."""
    scratch("baseline")
    login, ls = scratch.tree / "bin" / "login", scratch.tree / "bin" / "ls"
    login.write_text("upgraded by dpkg\n")
    ls.write_text("edited by hand after the upgrade\n")
    with open(scratch.log, "a") as f:
        f.write("2026-12-03 04:00:01 status installed tool:amd64 1.1\n")
    # dpkg's answer for a package that does not exist here (the real dpkg path: tests/integration/test_integrity.py).
    monkeypatch.setattr(aide_tool, "package_files", lambda pkg: {str(login)} if pkg == "tool:amd64" else set())
    capsys.readouterr()
    assert scratch("check") == 1
    out = capsys.readouterr().out
    assert "took in 1 package(s) dpkg installed: tool:amd64" in out
    assert f"changed: {ls}" in out and f"changed: {login}" not in out
    with open(scratch.log, "a") as f:  # nothing new in dpkg's log: nothing more is taken in
        f.write("2026-12-03 04:10:00 startup packages configure\n")
    capsys.readouterr()
    scratch("check")
    assert "took in" not in capsys.readouterr().out


def test_installed_packages_read_from_dpkgs_log():
    lines = ["2026-12-03 13:44:03 status half-configured aide:amd64 0.18.3-1+deb12u5",
             "2026-12-03 13:44:03 status installed aide:amd64 0.18.3-1+deb12u5",
             "2026-12-03 13:44:03 upgrade libc6:amd64 2.36-9 2.36-9+deb12u14",
             "2026-12-03 13:44:11 status installed libc6:amd64 2.36-9+deb12u14"]
    assert aide_tool.installed_packages(lines) == ["aide:amd64", "libc6:amd64"]


def test_package_files_are_dpkgs_list_of_a_real_package():
    need("dpkg-query")
    pkg = "aide" if shutil.which("aide") else "dpkg"
    files = aide_tool.package_files(pkg)
    assert shutil.which(pkg) and os.path.realpath(shutil.which(pkg)) in {os.path.realpath(f) for f in files}


def test_limit_patterns_are_anchored_and_bounded():
    paths = [f"/usr/lib/x86_64-linux-gnu/lib{i:05d}.so.1" for i in range(3000)]
    patterns = aide_tool.limit_patterns(paths)
    assert len(patterns) > 1 and all(len(p) <= aide_tool.LIMIT_CHARS + 100 for p in patterns)
    joined = [re.compile(p) for p in patterns]
    assert all(any(r.match(path) for r in joined) for path in paths)
    assert not any(r.match(paths[0] + ".bak") for r in joined)


def test_the_tool_runs_as_a_program(tmp_path):
    res = run([sys.executable, str(integrity.AIDE_TOOL_SOURCE), "--conf", "x", "--db", str(tmp_path / "db"),
               "--state", "s", "check"])
    assert res.returncode == 2 and "no baseline" in res.stderr and "Traceback" not in res.stderr
