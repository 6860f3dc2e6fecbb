"""Every report format is rendered from one document: the counts agree, and a failed control shows its id,
evidence and references everywhere. The HTML report is opened in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from deploy import catalog, report_formats
from tests import browser

EVIDENCE = "PasswordAuthentication is not 'no' for: user=ops,addr=10.0.2.2,lport=22 -> ['yes']"
ROWS = [
    {"host": "web-1", "control": "sshd-27", "title": "t", "status": "FAIL", "details": [f"test_x[web-1]: {EVIDENCE}"]},
    {"host": "web-1", "control": "sshd-09", "title": "t", "status": "WAIVED",
     "details": ["test_y[web-1]: waived until 2027-06-30 (owner: ops): listens on every address on purpose"]},
    {"host": "web-1", "control": "os-12", "title": "t", "status": "NOT VERIFIED",
     "details": ["test_z[web-1]: not verified: CPU vulnerability mitigations cannot be checked: the host is a "
                 "container (lxc), its kernel belongs to the provider"]},
    {"host": "web-1", "control": "hk-fw-01", "title": "t", "status": "PASS", "details": []},
    {"host": "web-2", "control": "sshd-27", "title": "t", "status": "PASS", "details": []},
    {"host": "web-2", "control": "hk-fw-01", "title": "t", "status": "ERROR", "details": ["test_w[web-2]: boom"]},
]


@pytest.fixture(scope="module")
def doc():
    return report_formats.document(ROWS, catalog.load(), "prod", "2026-12-03T10:00:00Z", {"db-1": "cannot log in"})


def test_the_document_is_versioned_and_counted(doc):
    assert (doc["schema"], doc["schema_version"]) == ("hardkit-compliance-report", 1)
    assert doc["summary"] == {"FAIL": 1, "ERROR": 1, "NOT VERIFIED": 1, "SKIP": 0, "WAIVED": 1, "PASS": 2}
    assert [(h["name"], h["reachable"]) for h in doc["hosts"]] == [("db-1", False), ("web-1", True), ("web-2", True)]
    row = next(r for r in doc["controls"] if r["control"] == "sshd-27" and r["host"] == "web-1")
    assert EVIDENCE in row["evidence"]
    assert "dev-sec ssh-baseline sshd-27" in row["references"] and row["area"] == "ssh"
    waived = next(r for r in doc["controls"] if r["status"] == "WAIVED")
    assert waived["waiver"].endswith("listens on every address on purpose")


def test_counts_agree_across_json_markdown_and_junit(doc):
    from_json = json.loads(report_formats.to_json(doc))["summary"]
    md = report_formats.to_markdown(doc)
    total = next(line for line in md.splitlines() if line.startswith("| **all**"))
    from_md = dict(zip(report_formats.STATUSES, map(int, total.split("|")[3:-1])))
    junit = ET.fromstring(report_formats.to_junit(doc))
    cases = [c for s in junit for c in s if c.get("name") != "reachable"]
    outcome = Counter(("FAIL" if c.find("failure") is not None else "ERROR" if c.find("error") is not None
                       else c.find("skipped").get("message").split(":")[0] if c.find("skipped") is not None
                       else "PASS") for c in cases)
    assert from_json == from_md == {s: outcome.get(s, 0) for s in report_formats.STATUSES} == doc["summary"]
    assert len(cases) == len(ROWS)
    unreachable = [s for s in junit if s.get("name") == "db-1"][0]
    assert unreachable.find("testcase/error").get("message") == "host unreachable: cannot log in"


def test_a_failed_control_shows_id_evidence_and_references_everywhere(doc):
    md, junit = report_formats.to_markdown(doc), report_formats.to_junit(doc)
    fail_md = next(line for line in md.splitlines() if "| sshd-27 |" in line and "FAIL" in line)
    assert EVIDENCE.split(" -> ")[0] in fail_md and "dev-sec ssh-baseline sshd-27" in fail_md
    case = next(c for c in ET.fromstring(junit).iter("testcase") if c.get("name", "").startswith("sshd-27")
                and c.find("failure") is not None)
    assert EVIDENCE in case.find("failure").text and "dev-sec ssh-baseline sshd-27" in case.find("failure").text
    terminal = next(line for line in report_formats.terminal_lines(doc) if "sshd-27" in line and "FAIL" in line)
    assert EVIDENCE.split(" -> ")[0] in terminal, terminal  # a CI log shows why, not only that
    html = report_formats.to_html(doc)
    assert "sshd-27" in html and "dev-sec ssh-baseline sshd-27" in html
    assert "http://" not in html and "https://" not in html and "<link" not in html and " src=" not in html


@pytest.mark.skipif(not browser.available(), reason=browser.MISSING)
def test_the_html_report_works_in_chromium(doc, tmp_path):
    path = tmp_path / "compliance.html"
    path.write_text(report_formats.to_html(doc))
    with browser.chromium(tmp_path) as driver:
        driver.get(path.as_uri())
        rows = driver.find_elements("css selector", "#controls tbody tr")
        assert len(rows) == len(ROWS)
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        totals = {td.get_attribute("data-count"): int(td.text)
                  for td in driver.find_elements("css selector", "#total td[data-count]")}
        assert totals == doc["summary"]

        def visible(**filters):
            for key, value in filters.items():
                driver.execute_script(f"var s = document.getElementById('f-{key}'); s.value = arguments[0]; "
                                      "s.dispatchEvent(new Event('change'));", value)
            return [r.get_attribute("data-control") for r in rows if r.is_displayed()]

        assert visible(status="FAIL") == ["sshd-27"]
        failed = next(r for r in rows if r.is_displayed())
        assert EVIDENCE in failed.text and "dev-sec ssh-baseline sshd-27" in failed.text
        assert visible(status="", area="firewall") == ["hk-fw-01", "hk-fw-01"]
        assert visible(area="", host="web-2") == ["hk-fw-01", "sshd-27"]
        assert visible(host="", status="WAIVED") and "listens on every address on purpose" in \
            next(r for r in rows if r.is_displayed()).text
        assert driver.find_element("id", "shown").text == f"1 of {len(ROWS)} shown"
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert logs == [], logs


def _per_host_documents():
    """What `hardkit verify` gets back from one pytest per host: a whole document each."""
    by_host = {}
    for r in ROWS:
        by_host.setdefault(r["host"], []).append(r)
    docs = [report_formats.document(rows, catalog.load(), "prod", "2026-12-03T10:00:0%dZ" % i)
            for i, rows in enumerate(by_host.values())]
    return docs + [report_formats.document([], catalog.load(), "prod", "2026-12-03T10:00:09Z",
                                           {"db-1": "cannot log in"})]


def test_per_host_documents_merge_into_the_document_one_run_writes(doc):
    merged = report_formats.merge(_per_host_documents(), "prod", "2026-12-03T10:00:00Z")
    assert merged == doc


def test_merged_counts_agree_across_formats_and_a_host_without_results_is_listed():
    merged = report_formats.merge(_per_host_documents(), "prod", "2026-12-03T10:00:00Z",
                                  {"web-3": "its compliance run wrote no report (pytest exit 3)"})
    assert [(h["name"], h["reachable"], bool(h["error"])) for h in merged["hosts"]] == [
        ("db-1", False, True), ("web-1", True, False), ("web-2", True, False), ("web-3", True, True)]
    assert merged["summary"] == {"FAIL": 1, "ERROR": 1, "NOT VERIFIED": 1, "SKIP": 0, "WAIVED": 1, "PASS": 2}
    assert sum(sum(h["summary"].values()) for h in merged["hosts"]) == len(merged["controls"]) == len(ROWS)
    md = report_formats.to_markdown(merged)
    total = next(line for line in md.splitlines() if line.startswith("| **all**"))
    assert dict(zip(report_formats.STATUSES, map(int, total.split("|")[3:-1]))) == merged["summary"]
    assert "| web-3 | yes, NOT CHECKED: its compliance run wrote no report (pytest exit 3) |" in md
    junit = ET.fromstring(report_formats.to_junit(merged))
    assert int(junit.get("tests")) == len(ROWS)
    assert sum(int(s.get("failures")) for s in junit) == 1 and sum(int(s.get("errors")) for s in junit) == 1
    not_checked = next(s for s in junit if s.get("name") == "web-3")
    assert not_checked.find("testcase/error").get("message").startswith("host not checked: its compliance run")
    assert "NOT CHECKED: its compliance run wrote no report" in report_formats.to_html(merged)
