"""Running the compliance suite for `hardkit verify` and `hardkit drift`, and reading its verdict.

The suite runs in its own pytest process (tests/compliance with the deploy.report plugin); the
versioned report it writes (deploy/report_formats.py) is the only thing read back: the exit code,
the comparison with an earlier run and the history all come from that document.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from deploy import report_formats

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3
REPORT = "compliance.json"


def input_problems(waivers_file: str | None) -> list[str]:
    """The catalog and the waiver file, checked before any host is contacted (every problem at once)."""
    from deploy import catalog
    from deploy.waivers import WaiverError, load_waivers

    try:
        known = set(catalog.load())
    except catalog.CatalogError as e:
        return str(e).splitlines()
    try:
        load_waivers(Path(waivers_file) if waivers_file else None, known_controls=known)
    except WaiverError as e:
        return str(e).splitlines()
    return []


def read_previous(path: str) -> tuple[dict | None, str | None]:
    """An earlier report to compare with, or why it cannot be used."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, f"--compare: no such file: {path}"
    except (OSError, ValueError) as e:
        return None, f"--compare: {path} is not a JSON report ({e})"
    if not isinstance(doc, dict) or not isinstance(doc.get("controls"), list) or not all(
            isinstance(r, dict) and {"host", "control", "status"} <= set(r) for r in doc["controls"]):
        return None, f"--compare: {path} is not a hardkit compliance report (no controls with host, control, status)"
    return doc, None


def _suite_cmd(inventory: Path, label: str, report_dir: Path, hosts: list[str] | None, select: str | None,
               auditors: bool, keep_lynis: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "compliance"), "-p", "deploy.report",
           "--hardkit-inventory", str(inventory.resolve()), "--hardkit-report-dir", str(report_dir),
           "--hardkit-report-label", label,
           "-q", "--no-header", "-rfE", "-o", "console_output_style=classic", "-p", "no:cacheprovider"]
    if hosts is not None:
        cmd += ["--hardkit-limit", ",".join(hosts)]
    if select:
        cmd += ["-k", select]
    if auditors:
        cmd.append("--hardkit-auditors")
    if keep_lynis:
        cmd.append("--hardkit-keep-lynis")
    return cmd


def _read_report(report_dir: Path, started: float) -> dict | None:
    """The document this run wrote, or None (none written, or one left by an earlier run)."""
    report = report_dir / REPORT
    if not report.exists() or report.stat().st_mtime < started:
        return None
    return json.loads(report.read_text())


def default_parallel() -> int:
    """Hosts checked at once when `--parallel` is not given: two per CPU of the controller, at least 4.
    Each host's checks are a pytest process of their own (~80 MB, CPU-bound while it starts and
    evaluates): a 50-host fleet all at once would only queue on the CPUs and hold 4 GB."""
    return max(4, 2 * (os.cpu_count() or 1))


def run(inventory: Path, label: str, report_dir: Path, *, limit: list[str] | None = None,
        select: str | None = None, waivers: str | None = None, quiet: bool = False,
        auditors: bool = False, keep_lynis: bool = False, hosts: list[str] | None = None,
        parallel: int | None = None) -> tuple[dict | None, int]:
    """Run the suite; (the report document, pytest's exit code). The document is None if none was written.

    With more than one host (`hosts`, else `limit`), each host gets its own pytest process, at most
    `parallel` at once (default: default_parallel()), and their documents are merged into one (report_formats.merge):
    one pytest over every host checks them one after another, which made a 12-host verify cost
    about 14 times one host's. Without a host list the suite runs once over the inventory, as before."""
    names = hosts if hosts is not None else limit
    report_dir = report_dir.resolve()  # pytest runs from the repository, not from the caller's folder
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if waivers:
        env["HARDKIT_WAIVERS"] = str(Path(waivers).resolve())
    options = dict(select=select, auditors=auditors, keep_lynis=keep_lynis)
    if names is None or len(names) < 2:
        started = time.time()
        cmd = _suite_cmd(inventory, label, report_dir, names, **options)
        rc = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env, stdout=subprocess.DEVNULL if quiet else None).returncode
        return _read_report(report_dir, started), rc
    return _run_per_host(inventory, label, report_dir, names, parallel, env, quiet, options)


def _run_per_host(inventory: Path, label: str, report_dir: Path, names: list[str], parallel: int | None,
                  env: dict, quiet: bool, options: dict) -> tuple[dict | None, int]:
    """One pytest per host into a private folder each, at most `parallel` at once; one merged document
    written to `report_dir` in every format. Each host's pytest output is printed whole when it ends."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="hardkit-verify-") as tmp:
        def one(name: str) -> tuple[str, dict | None, int, str]:
            folder = Path(tmp) / name
            cmd = _suite_cmd(inventory, label, folder, [name], **options)
            res = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            return name, _read_report(folder, started), res.returncode, res.stdout

        docs, rcs, unchecked = [], [], {}
        with ThreadPoolExecutor(max_workers=max(1, min(parallel or default_parallel(), len(names)))) as pool:
            for done in as_completed([pool.submit(one, n) for n in names]):
                name, doc, rc, output = done.result()
                if not quiet:
                    print(f"== {name} (pytest exit {rc}) ==\n{output}", end="" if output.endswith("\n") else "\n",
                          flush=True)
                rcs.append(rc)
                if doc is None:
                    unchecked[name] = f"its compliance run wrote no report (pytest exit {rc})"
                else:
                    docs.append(doc)
    worst = max(rcs)
    if not docs and all(rc in (2, 4) for rc in rcs):
        return None, worst  # the suite refused its options (usage): the same for every host
    doc = report_formats.merge(docs, label, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), unchecked)
    paths = report_formats.write_all(doc, report_dir)
    if not quiet:
        print("=" * 30 + " hardkit compliance (all hosts) " + "=" * 30)
        print("\n".join(report_formats.terminal_lines(doc)))
        print("report: " + ", ".join(str(p) for p in paths), flush=True)
    return doc, worst


def exit_code(doc: dict | None, pytest_rc: int) -> int:
    """What a pipeline reads: 3 a host unreachable, 1 a control failed (or a host's run wrote no results),
    0 all passed or waived, 2 usage."""
    if doc is None:
        return EXIT_BAD_INPUT if pytest_rc in (2, 4) else EXIT_FAILED  # pytest refused (usage) or crashed
    if any(not h["reachable"] for h in doc["hosts"]):
        return EXIT_UNREACHABLE
    if any(h.get("error") for h in doc["hosts"]):  # reachable, but its run wrote no results
        return EXIT_FAILED
    if any(doc["summary"][status] for status in report_formats.FAILING):
        return EXIT_FAILED
    return EXIT_OK


def keep(report_dir: Path, doc: dict) -> Path:
    """Keep this run's JSON as <report dir>/<UTC timestamp>/compliance.json (the history)."""
    stamp = doc["generated"].replace("-", "").replace(":", "")
    folder = report_dir / stamp
    n = 1
    while folder.exists():  # two runs within one second
        folder, n = report_dir / f"{stamp}-{n}", n + 1
    folder.mkdir(parents=True)
    shutil.copyfile(report_dir / REPORT, folder / REPORT)
    return folder / REPORT


def changes(previous: dict, current: dict) -> list[str]:
    """Lines naming every (host, control) whose status differs from the previous run (appeared/gone too)."""
    before = {(r["host"], r["control"]): r["status"] for r in previous["controls"]}
    now = {(r["host"], r["control"]): r["status"] for r in current["controls"]}
    out = []
    for key in sorted(before.keys() | now.keys()):
        old, new = before.get(key, "absent"), now.get(key, "absent")
        if old != new:
            out.append(f"{key[0]} {key[1]}: {old} -> {new}")
    return out
