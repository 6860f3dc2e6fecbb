"""The control catalog matches the checks one to one, and `hardkit controls` prints it.

The checks' control ids are collected by pytest itself (no host is contacted at collection), so
a new check without a catalog entry, or an entry whose check was removed, fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import catalog
from tests.unit.inventory_files import one_host_inventory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checked_ids(tmp_path_factory) -> dict[str, list[dict]]:
    d = tmp_path_factory.mktemp("catalog")
    inv = one_host_inventory(d)
    out = d / "index.json"
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-p", "deploy.report", "-p", "tests.compliance.control_index", "tests/compliance",
                          "--hardkit-inventory", str(inv), "--hardkit-control-index", str(out), "--hardkit-auditors"],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(out.read_text())


def test_every_check_has_an_entry_and_every_entry_a_check(checked_ids):
    entries = catalog.load()
    assert sorted(set(checked_ids) - set(entries)) == [], "checks without a catalog entry"
    assert sorted(set(entries) - set(checked_ids)) == [], "catalog entries without a check"


def test_areas_match_the_check_modules(checked_ids):
    entries = catalog.load()
    modules: dict[str, set] = {}
    for cid, checks in checked_ids.items():
        for c in checks:
            modules.setdefault(entries[cid].area, set()).add(c["module"])
    # One area, one family of check modules (time and syslog share the time_logs role).
    assert all(len(m) == 1 for a, m in modules.items() if a != "time_logs"), modules
    assert modules["external"] == {"test_external_audit"}


def test_a_repeated_id_is_refused():
    text = ('[area.a]\ntitle = "A"\nrole = "roles/a.py"\nrequirement = "issue 1"\nrationale = "r"\n'
            '[control."x-01"]\narea = "a"\ntitle = "t"\n[control."x-01"]\narea = "a"\ntitle = "u"\n')
    with pytest.raises(catalog.CatalogError, match="x-01"):
        catalog.parse(text)


def test_every_problem_is_listed_at_once():
    text = ('[area.a]\ntitle = "A"\nrole = "roles/a.py"\nrequirement = "issue 1"\n'
            '[control."x-01"]\narea = "b"\ntitle = "t"\n'
            '[control."x-02"]\narea = "a"\ntitle = "t"\ntiers = ["metal"]\n'
            '[cis]\n"x-02" = "five"\n"x-09" = "1.2"\n')
    with pytest.raises(catalog.CatalogError) as e:
        catalog.parse(text)
    lines = str(e.value).splitlines()
    assert len(lines) == 5, lines
    for words in ("area a lacks rationale", "x-01: unknown area 'b'", "x-02: tiers", "'five' is not a section",
                  "maps x-09"):
        assert any(words in line for line in lines), (words, lines)


def test_references_are_derived_not_copied():
    entries = catalog.load()
    root = entries["sshd-06"]
    assert root.devsec == "dev-sec ssh-baseline sshd-06" and root.cis == "5.1.20"
    assert root.role == "roles/ssh.py" and root.requirement.startswith("issue 3")
    assert entries["hk-fw-04"].devsec is None
    assert entries["os-12"].tiers == ("vm",) and entries["hk-fw-04"].tiers == ("nspawn", "vm")


@pytest.mark.parametrize("fmt", ["md", "json"])
def test_hardkit_controls_prints_the_catalog(fmt):
    res = subprocess.run([str(Path(sys.executable).parent / "hardkit"), "controls", "--format", fmt], cwd="/",
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    n = len(catalog.load())
    if fmt == "json":
        data = json.loads(res.stdout)
        assert data["catalog_version"] == 1 and len(data["controls"]) == n
        assert {"id", "title", "rationale", "role", "tiers", "devsec", "cis", "requirement"} <= set(data["controls"][0])
    else:
        rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and not line.startswith("| id ")]
        assert len(rows) == n and any(r.startswith("| sshd-06 |") and "5.1.20" in r for r in rows)
