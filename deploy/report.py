"""The compliance report: one row per (host, control id), in the terminal and in every format.

A pytest plugin (`-p deploy.report`): every compliance check carries `@pytest.mark.control(ID)`
and runs once per host; this plugin gathers the outcomes and writes compliance.json (the
versioned document), .md, .xml (JUnit: a testcase per control and host) and .html to the report
folder through deploy/report_formats.py.
A control is PASS only if every check tagged with it passed on that host; WAIVED, NOT VERIFIED
(what this kind of host cannot show, e.g. a container's kernel) and SKIP keep their reason, so
nothing is silently left out.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deploy import report_formats

#: Worst first: a control with several checks reports its worst outcome.
ORDER = {s: i for i, s in enumerate(report_formats.STATUSES)}
#: A skip reason starting so is NOT VERIFIED (tests/compliance/target.py writes it).
NOT_VERIFIED_PREFIX = "not verified: "
_rows: dict[tuple[str, str], dict] = {}


def pytest_addoption(parser):
    group = parser.getgroup("hardkit")
    group.addoption("--hardkit-report-dir", default=None, help="folder for compliance.json/.md/.xml/.html")
    group.addoption("--hardkit-report-label", default=None, help="the inventory's name in the report")


def _control_of(item) -> tuple[str, str] | None:
    marker = item.get_closest_marker("control")
    if marker is None:
        return None
    doc = (item.function.__doc__ or "").strip().splitlines()
    return marker.args[0], (doc[0] if doc else item.originalname)


def pytest_runtest_setup(item):
    ctl = _control_of(item)
    host = getattr(item, "callspec", None) and item.callspec.params.get("target")
    if ctl and host:
        item.user_properties.append(("hardkit_control", ctl[0]))
        item.user_properties.append(("hardkit_title", ctl[1]))
        item.user_properties.append(("hardkit_host", host))


def pytest_runtest_logreport(report):
    props = dict(report.user_properties)
    if "hardkit_control" not in props:
        return
    if report.when != "call" and report.passed:
        return
    key = (props["hardkit_host"], props["hardkit_control"])
    if report.passed:
        status, detail = "PASS", ""
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        status = ("WAIVED" if reason.startswith("waived") else
                  "NOT VERIFIED" if reason.startswith(NOT_VERIFIED_PREFIX) else "SKIP")
        detail = reason
    else:
        status = "FAIL" if report.when == "call" else "ERROR"
        detail = _first_line(report)
    row = _rows.setdefault(key, {"host": key[0], "control": key[1], "title": props["hardkit_title"],
                                 "status": "PASS", "details": []})
    if ORDER[status] < ORDER[row["status"]]:  # a control is as bad as its worst check
        row["status"] = status
    if detail:
        row["details"].append(f"{report.head_line}: {detail}")


def _first_line(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash else str(report.longrepr)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:3])[:400] if lines else "failed"


def rows() -> list[dict]:
    return sorted(_rows.values(), key=lambda r: (r["host"], r["control"]))


def _document(config) -> dict:
    from deploy import catalog

    return report_formats.document(rows(), catalog.load(), config.getoption("--hardkit-report-label") or "inventory",
                                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   getattr(config, "hardkit_unreachable", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _rows and not getattr(config, "hardkit_unreachable", {}):
        return
    tr = terminalreporter
    doc = _document(config)
    tr.section("hardkit compliance")
    for line in report_formats.terminal_lines(doc):
        tr.write_line(line)
    out = config.getoption("--hardkit-report-dir")
    if out:
        paths = report_formats.write_all(doc, Path(out))
        tr.write_line("report: " + ", ".join(str(p) for p in paths))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "control(id): the compliance control a check proves")
