"""verify's verdict, history and comparison are read from the versioned report alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from deploy import verify_run

REPO = Path(__file__).resolve().parents[2]


def doc(statuses: dict, unreachable=(), generated="2026-12-03T10:00:00Z") -> dict:
    rows = [{"host": h, "control": c, "status": s} for (h, c), s in statuses.items()]
    summary = {s: sum(r["status"] == s for r in rows) for s in ("FAIL", "ERROR", "NOT VERIFIED", "SKIP", "WAIVED", "PASS")}
    hosts = [{"name": h, "reachable": h not in unreachable} for h in {r["host"] for r in rows} | set(unreachable)]
    return {"generated": generated, "summary": summary, "hosts": hosts, "controls": rows}


def test_exit_codes():
    assert verify_run.exit_code(doc({("a", "x"): "PASS", ("a", "y"): "WAIVED", ("a", "z"): "NOT VERIFIED"}), 0) == 0
    assert verify_run.exit_code(doc({("a", "x"): "FAIL"}), 1) == 1
    assert verify_run.exit_code(doc({("a", "x"): "ERROR"}), 1) == 1
    assert verify_run.exit_code(doc({("a", "x"): "FAIL"}, unreachable=["b"]), 1) == 3
    assert verify_run.exit_code(None, 4) == 2 and verify_run.exit_code(None, 3) == 1


def test_changes_name_every_status_that_moved():
    before = doc({("a", "x"): "PASS", ("a", "y"): "FAIL", ("b", "x"): "PASS"})
    after = doc({("a", "x"): "FAIL", ("a", "y"): "FAIL", ("a", "z"): "PASS"})
    assert verify_run.changes(before, after) == ["a x: PASS -> FAIL", "a z: absent -> PASS", "b x: PASS -> absent"]


def test_each_run_is_kept_under_its_timestamp(tmp_path):
    for _ in range(2):
        (tmp_path / "compliance.json").write_text("{}")
        kept = verify_run.keep(tmp_path, doc({}, generated="2026-12-03T10:00:00Z"))
    assert sorted(p.parent.name for p in tmp_path.glob("*/compliance.json")) == ["20261203T100000Z",
                                                                                "20261203T100000Z-1"]
    assert kept.parent.name == "20261203T100000Z-1"


def test_verify_lists_every_input_problem_at_once(tmp_path):
    bad_previous = tmp_path / "prev.json"
    bad_previous.write_text(json.dumps({"controls": [{"host": "a"}]}))
    waivers = tmp_path / "w.toml"
    waivers.write_text('[waiver."nope-01"]\nreason = "r"\nowner = "o"\nexpires = 2030-01-01\n')
    res = subprocess.run([str(Path(sys.executable).parent / "hardkit"), "verify", str(tmp_path / "missing.py"),
                          "--waivers", str(waivers), "--compare", str(bad_previous)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    for words in ("no such file", "nope-01: no control has this id", "is not a hardkit compliance report"):
        assert words in res.stderr, res.stderr


def test_drift_reads_the_dry_run_plan_not_its_empty_results():
    from deploy.drift import planned_changes

    raw = {"plan": [{"name": "Firewall | nftables ruleset", "hosts_with_change": ["a"],
                     "hosts_with_conditional_change": []},
                    {"name": "SSH | reload", "hosts_with_change": [], "hosts_with_conditional_change": ["a", "b"]},
                    {"name": "Baseline | packages", "hosts_with_change": [], "hosts_with_conditional_change": []}],
           "results": None}
    assert planned_changes(raw) == {"a": ["Firewall | nftables ruleset"]}
    assert planned_changes(None) == {}


def test_the_exit_code_comes_from_the_merged_document():
    from deploy import catalog, report_formats

    def one(host, status=None, unreachable=None):
        rows = [{"host": host, "control": "sshd-27", "title": "t", "status": status, "details": []}] if status else []
        return report_formats.document(rows, catalog.load(), "i", "2026-12-03T10:00:00Z", unreachable)

    merged = lambda *docs, unchecked=None: report_formats.merge(list(docs), "i", "t", unchecked)  # noqa: E731
    assert verify_run.exit_code(merged(one("a", "PASS"), one("b", "PASS")), 0) == 0
    assert verify_run.exit_code(merged(one("a", "PASS"), one("b", "FAIL")), 1) == 1
    assert verify_run.exit_code(merged(one("a", "FAIL"), one("b", unreachable={"b": "cannot log in"})), 1) == 3
    assert verify_run.exit_code(merged(one("a", "PASS"), unchecked={"b": "no report (pytest exit 3)"}), 3) == 1


def _two_unreachable_hosts(folder: Path) -> Path:
    """Two hosts where nothing listens (127.0.0.9, port 9): every login fails fast, no host is touched."""
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    data = (f'"ssh_hostname": "127.0.0.9", "ssh_port": 9, "ssh_key": "{key}", "admin_user": "ops", '
            f'"admin_keys": ["{key}.pub"], "ssh_allow_from": ["10.0.2.2/32"]')
    inv = folder / "inv.py"
    inv.write_text(f'hosts = [("one", {{{data}}}), ("two", {{{data}}})]\n')
    return inv


#: A few checks only: the hosts' logins are what these tests look at, not the whole suite.
LIGHT = ("-k", "root_only")


def _verify(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """This tree's `hardkit verify` (the venv's `hardkit` script may import another checkout's)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "deploy.cli", "verify", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_hosts_are_verified_one_pytest_each_into_one_report(tmp_path):
    inv = _two_unreachable_hosts(tmp_path)
    res = _verify(str(inv), "--report-dir", str(tmp_path / "r"), "--parallel", "2", *LIGHT, cwd=tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "== one (pytest exit" in res.stdout and "== two (pytest exit" in res.stdout, res.stdout
    doc = json.loads((tmp_path / "r" / "compliance.json").read_text())
    assert [(h["name"], h["reachable"]) for h in doc["hosts"]] == [("one", False), ("two", False)]
    assert all("cannot log in" in h["error"] for h in doc["hosts"])
    junit = (tmp_path / "r" / "compliance.xml").read_text()
    assert junit.count("host unreachable: one: cannot log in") == 1 and junit.count("host unreachable: two") == 1


def test_a_limited_verify_reports_only_its_own_hosts(tmp_path):
    """The suite logged in to every host of the inventory whatever --limit said, so one host's run
    listed the others' logins too (and one host down made every host's verify exit 3). A relative
    --report-dir is the caller's folder (the suite, run from the repository, wrote it there)."""
    inv = _two_unreachable_hosts(tmp_path)
    res = _verify(str(inv), "--limit", "one", "--report-dir", "r", *LIGHT, cwd=tmp_path)  # relative: to cwd
    assert res.returncode == 3, res.stdout + res.stderr
    doc = json.loads((tmp_path / "r" / "compliance.json").read_text())
    assert [h["name"] for h in doc["hosts"]] == ["one"], doc["hosts"]


def test_verify_refuses_a_parallel_below_one(tmp_path):
    inv = _two_unreachable_hosts(tmp_path)
    res = _verify(str(inv), "--parallel", "0", cwd=tmp_path)
    assert res.returncode == 2 and "--parallel must be 1 or more, not 0" in res.stderr, res.stderr


def test_without_parallel_at_most_the_default_number_of_hosts_run_at_once(tmp_path, monkeypatch):
    """`--parallel` unset: a large fleet is checked default_parallel() hosts at a time, not all at once."""
    import threading

    inv = _two_unreachable_hosts(tmp_path)
    running, peak, lock = [0], [0], threading.Lock()
    real_run = subprocess.run

    def one_hosts_pytest(cmd, **kwargs):
        if "pytest" not in cmd:
            return real_run(cmd, **kwargs)
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return subprocess.CompletedProcess(cmd, 1, stdout="")

    monkeypatch.setattr(verify_run, "default_parallel", lambda: 3)
    monkeypatch.setattr(verify_run.subprocess, "run", one_hosts_pytest)
    verify_run.run(inv, "fleet", tmp_path / "r", hosts=[f"h{i}" for i in range(8)], quiet=True)
    assert peak[0] == 3, peak


def test_the_default_is_two_per_cpu_and_at_least_four(monkeypatch):
    for cpus, expected in ((1, 4), (2, 4), (8, 16), (None, 4)):
        monkeypatch.setattr(verify_run.os, "cpu_count", lambda c=cpus: c)
        assert verify_run.default_parallel() == expected
