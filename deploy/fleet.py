"""Fleet deploys: hosts in rolling batches, each verified before the next, and one summary.

`hardkit deploy INV --batch N|P% [--max-fail N]` deploys the first batch (N hosts, or P% of the
selected hosts, rounded up), runs `hardkit verify` on that batch, and goes on only while no more
than --max-fail hosts of a batch failed (refused, unreachable, an operation failed, or a control
failing); the hosts after a stop are left untouched and listed as such. Without --batch every
host is one batch and nothing is verified (run `hardkit verify` after).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from deploy import host_times, runner
from deploy.inventory import Host, Inventory
from deploy.report_formats import FAILING

REPO_ROOT = Path(__file__).resolve().parent.parent


class BatchError(ValueError):
    """A --batch / --max-fail / --parallel value an operator must fix (exit 2, nothing touched)."""


def parse_batch(value: str | None, total: int) -> int:
    """Hosts per batch: `N` (>= 1) or `P%` (1-100, of `total`, rounded up); all of them without a value."""
    if value is None:
        return max(total, 1)
    text = value.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.ceil(total * pct / 100))
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise BatchError(f"--batch must be a number of hosts (>= 1) or a percentage such as 25%, not {value!r}") from None


def input_problems(batch: str | None, max_fail: int, parallel: int | None, total: int) -> list[str]:
    """Every problem of the fleet options at once."""
    problems = []
    try:
        parse_batch(batch, total)
    except BatchError as e:
        problems.append(str(e))
    if max_fail < 0:
        problems.append(f"--max-fail must be 0 or more, not {max_fail}")
    if parallel is not None and parallel < 1:
        problems.append(f"--parallel must be 1 or more, not {parallel}")
    return problems


@dataclass
class HostRow:
    name: str
    batch: int | None = None  # None: not reached (left untouched)
    login: str = ""
    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    verify: str = "-"  # "pass", "FAIL n", "-" (not verified)
    error: str = ""  # the first error, if any

    @property
    def ok(self) -> bool:
        return self.batch is not None and not self.error and not self.verify.startswith("FAIL")


@dataclass
class FleetResult:
    rows: dict[str, HostRow]
    stopped_after: int | None = None  # the batch after which the rollout stopped
    runs: list[runner.RunResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stopped_after is None and all(r.ok for r in self.rows.values())


def verify_hosts(inv: Inventory, names: list[str], parallel: int | None = None) -> dict[str, str]:
    """`hardkit verify` on these hosts (one pytest per host, at most `parallel` at once, as the
    command does): {host: "pass" | "FAIL n" (failing controls)}."""
    with tempfile.TemporaryDirectory(prefix="hardkit-verify-") as tmp:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, "-m", "deploy.cli", "verify", str(inv.path), "--limit", ",".join(names),
                        "--report-dir", tmp, *(["--parallel", str(parallel)] if parallel else [])],
                       cwd=str(REPO_ROOT), env=env, capture_output=True, text=True)
        report = Path(tmp) / "compliance.json"
        controls = json.loads(report.read_text())["controls"] if report.is_file() else []
    failing = {n: 0 for n in names}
    seen = set()
    for row in controls:
        seen.add(row["host"])
        if row["status"] in FAILING and row["host"] in failing:
            failing[row["host"]] += 1
    return {n: ("FAIL no report" if n not in seen else "pass" if not failing[n] else f"FAIL {failing[n]}")
            for n in names}


def _fill(row: HostRow, h: runner.HostResult) -> None:
    row.login, row.changed, row.unchanged, row.failed = h.login, len(h.changed), len(h.unchanged), len(h.failed)
    row.error = h.error or (f"operation failed: {h.failed[0]}" if h.failed else "")


def deploy(inv: Inventory, hosts: list[Host], *, batch: str | None = None, max_fail: int = 0, dry: bool = False,
           parallel: int | None = None, identity: str | None = None, stream=sys.stderr, progress=None,
           site: Path = runner.SITE) -> FleetResult:
    size = parse_batch(batch, len(hosts))
    rows = {h.name: HostRow(h.name) for h in hosts}
    result = FleetResult(rows)
    batches = [hosts[i:i + size] for i in range(0, len(hosts), size)]
    extra = ["--parallel", str(parallel)] if parallel else []
    for number, part in enumerate(batches, start=1):
        if progress and batch is not None:
            progress(f"batch {number}/{len(batches)}: {', '.join(h.name for h in part)}")
        run = runner.deploy(inv, part, dry=dry, extra_args=extra, stream=stream, site=site, identity=identity)
        result.runs.append(run)
        for h in part:
            rows[h.name].batch = number
            _fill(rows[h.name], run.hosts[h.name])
        if batch is not None and not dry:
            reached = [h.name for h in part if not rows[h.name].error]
            for name, outcome in (verify_hosts(inv, reached, parallel) if reached else {}).items():
                rows[name].verify = outcome
        failed = [h.name for h in part if not rows[h.name].ok]
        if batch is not None and len(failed) > max_fail and number < len(batches):
            result.stopped_after = number
            break
    return result


def summary(result: FleetResult, dry: bool = False) -> list[str]:
    """One table: host, batch, login, changed/unchanged/failed, verify, first error."""
    head = ("host", "batch", "login", "changed", "unchanged", "failed", "verify", "first error")
    lines = []
    for r in result.rows.values():
        if r.batch is None:
            lines.append((r.name, "-", "-", "-", "-", "-", "-", "untouched (the rollout stopped)"))
        else:
            lines.append((r.name, str(r.batch), r.login or "-", str(r.changed), str(r.unchanged), str(r.failed),
                          r.verify, r.error.splitlines()[0][:160] if r.error else ""))
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [fmt(head)] + [fmt(cells) for cells in lines]
    if result.stopped_after is not None:
        untouched = [r.name for r in result.rows.values() if r.batch is None]
        out.append(f"stopped after batch {result.stopped_after}: more hosts failed than --max-fail allows; "
                   f"{len(untouched)} host(s) left untouched: {', '.join(untouched)}")
    if dry:
        out.append("dry run: nothing changed ('changed' is what would change)")
    return out


def as_json(result: FleetResult) -> dict:
    """The summary per host, with each run's own detail (operation names, credentials) where it ran."""
    detail = {}
    for run in result.runs:
        for name, h in run.hosts.items():
            ran = host_times.span(run.host_times.get(name, []))
            detail[name] = {"operations_from": ran and round(ran[0], 3), "operations_to": ran and round(ran[1], 3),
                            "changed": h.changed, "failed": h.failed, "refused": h.error,
                            "credentials": h.credentials and {"sent": h.credentials.sent,
                                                              "removed": h.credentials.removed},
                            "totp_seeds": h.totp_seeds and {"sent": h.totp_seeds.sent, "removed": h.totp_seeds.removed}}
    return {"ok": result.ok, "stopped_after_batch": result.stopped_after,
            "hosts": {r.name: {"batch": r.batch, "login": r.login, "changed_count": r.changed,
                               "unchanged": r.unchanged, "failed_count": r.failed, "verify": r.verify,
                               "error": r.error, "ok": r.ok,
                               **detail.get(r.name, {"operations_from": None, "operations_to": None, "changed": [],
                                                     "failed": [], "refused": "", "credentials": None,
                                                     "totp_seeds": None})}
                      for r in result.rows.values()},
            "runs": [{"hosts": sorted(run.hosts), "peak_hosts_at_once": host_times.peak_at_once(run.host_times)}
                     for run in result.runs],
            "pyinfra": [run.raw for run in result.runs]}
