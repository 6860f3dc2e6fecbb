"""verify's verdict, history and comparison are read from the versioned report alone."""

from __future__ import annotations

import json
import subprocess
import sys
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
