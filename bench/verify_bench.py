"""How long `hardkit verify` takes: one host (median of 5) against 6 hosts, with the ratio.

Boots a lab of 6 nspawn hosts, deploys them once (not timed), then times:
  - `hardkit verify --limit HOST` of the first host, 5 times (median, min, max);
  - `hardkit verify` of the whole 6-host inventory (one run of the suite over every host), 3 times;
  - 6 `hardkit verify --limit HOST` processes started at once, one per host (wall time until the
    last ends), 3 times.
Every run must exit 0 (or the bench stops: a figure of a failing verify means nothing). Printed,
and written as JSON and Markdown under reports/bench/. The machine is shared and noisy: compare
figures within one run. HARDKIT_BENCH_PREFIX names the lab (default `bverify`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import runner  # noqa: E402
from deploy.inventory import load  # noqa: E402
from sandbox import lab  # noqa: E402

PREFIX = os.environ.get("HARDKIT_BENCH_PREFIX", "bverify")
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "reports" / "bench"
HOSTS = 6
ONE_HOST_RUNS = 5
FLEET_RUNS = 3


def verify_cmd(inventory: Path, report_dir: Path, limit: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "deploy.cli", "verify", str(inventory), "--report-dir", str(report_dir)]
    return cmd + (["--limit", limit] if limit else [])


def wall(cmds: list[list[str]]) -> float:
    """Seconds from starting every command at once until the last one ends; each must exit 0."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    took = time.perf_counter() - start
    failed = [(p.returncode, out[-1500:]) for p, out in zip(procs, outs) if p.returncode != 0]
    if failed:
        raise SystemExit(f"bench: verify failed: {failed}")
    return took


def summary(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def measure(inventory: Path, names: list[str], scratch: Path) -> dict:
    one = [wall([verify_cmd(inventory, scratch / f"one{i}", names[0])]) for i in range(ONE_HOST_RUNS)]
    suite = [wall([verify_cmd(inventory, scratch / f"all{i}")]) for i in range(FLEET_RUNS)]
    apart = [wall([verify_cmd(inventory, scratch / f"par{i}-{n}", n) for n in names]) for i in range(FLEET_RUNS)]
    return {"hosts": len(names), "one_host": summary(one), "one_run_all_hosts": summary(suite),
            "one_process_per_host": summary(apart)}


def report(r: dict) -> list[str]:
    base = r["one_host"]["median"]
    rows = [("1 host (median of 5)", r["one_host"]),
            (f"{r['hosts']} hosts, one verify run", r["one_run_all_hosts"]),
            (f"{r['hosts']} hosts, {r['hosts']} verify processes at once", r["one_process_per_host"])]
    lines = ["hardkit verify on the nspawn tier (deployed hosts with the bot; wall seconds)",
             f"  {'':44s} {'median':>7s} {'min':>7s} {'max':>7s}  x of 1 host"]
    for label, s in rows:
        lines.append(f"  {label:44s} {s['median']:7.1f} {s['min']:7.1f} {s['max']:7.1f}  {s['median'] / base:10.2f}")
    return lines


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/verify_bench.py needs root (it boots lab targets)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    lab.down(PREFIX, log=lambda m: None)
    try:
        path = lab.up(count=HOSTS, prefix=PREFIX, log=lambda m: None)
        inv = load(path)
        deployed = runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL)
        if not deployed.ok:
            raise SystemExit(f"bench: deploy failed: {[(h.failed, h.error) for h in deployed.hosts.values()]}")
        with tempfile.TemporaryDirectory(prefix="hardkit-verify-bench-") as tmp:
            result = measure(path, [h.name for h in inv.hosts], Path(tmp))
    finally:
        lab.down(PREFIX, log=lambda m: None)
    lines = report(result)
    print("\n".join(lines))
    (OUT_DIR / "verify_bench.json").write_text(json.dumps(result, indent=2))
    (OUT_DIR / "verify_bench.md").write_text("```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
