"""No-op redeploy and verify of a fleet: 1, 3, 6 and 12 nspawn hosts, with the ratio to one host.

Each size gets its own lab, deployed once, then redeployed with nothing to change (timed, the
fact batch warm), then verified (timed). Also the controller's peak memory (the largest resident
set of the hardkit process and its children, from getrusage). Written also as JSON and Markdown
under reports/bench/. The machine is shared and noisy: compare figures within one run.
Sizes: HARDKIT_BENCH_SIZES=1,3 to measure fewer.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab_loop import timed  # noqa: E402
from deploy import runner  # noqa: E402
from deploy.inventory import load  # noqa: E402
from sandbox import lab  # noqa: E402

#: The lab this bench boots (HARDKIT_BENCH_PREFIX overrides it, e.g. to keep to a prefix on a shared machine).
PREFIX = os.environ.get("HARDKIT_BENCH_PREFIX", "bfleet")
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "reports" / "bench"


def deploy_ok(path: Path) -> runner.RunResult:
    inv = load(path)
    result = runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL)
    if not result.ok:
        raise SystemExit(f"bench: deploy failed: {[(h.failed, h.error) for h in result.hosts.values()]}")
    return result


def one_size(n: int) -> dict:
    lab.down(PREFIX, log=lambda m: None)
    try:
        path = lab.up(count=n, prefix=PREFIX, log=lambda m: None)
        fresh, _ = timed(lambda: deploy_ok(path))
        deploy_ok(path)  # the batch learns the questions of a deployed host
        noop, again = timed(lambda: deploy_ok(path))
        verify, res = timed(lambda: subprocess.run([sys.executable, "-m", "deploy.cli", "verify", str(path),
                                                    "--report-dir", str(OUT_DIR / "fleet-verify")],
                                                   cwd=str(REPO), capture_output=True, text=True))
        return {"hosts": n, "fresh": fresh, "noop": noop, "noop_changed": again.changed_ops,
                "verify": verify, "verify_ok": res.returncode == 0}
    finally:
        lab.down(PREFIX, log=lambda m: None)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/fleet_noop.py needs root (it boots lab targets)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in os.environ.get("HARDKIT_BENCH_SIZES", "1,3,6,12").split(",")]
    rows = [one_size(n) for n in sizes]
    one = rows[0]
    peak_mb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    lines = ["fleet on the nspawn tier (all hosts of a size at once)",
             "  hosts   fresh s   no-op s  x of 1 host   verify s  x of 1 host"]
    for r in rows:
        lines.append(f"  {r['hosts']:5d} {r['fresh']:9.1f} {r['noop']:9.2f} {r['noop'] / one['noop']:11.2f} "
                     f"{r['verify']:10.2f} {r['verify'] / one['verify']:11.2f}"
                     + ("" if r["noop_changed"] == 0 else f"  (no-op changed {r['noop_changed']}!)")
                     + ("" if r["verify_ok"] else "  (verify failed)"))
    lines.append(f"  controller peak memory (largest process): {peak_mb:.0f} MB")
    print("\n".join(lines))
    (OUT_DIR / "fleet_noop.json").write_text(json.dumps({"rows": rows, "peak_mb": peak_mb}, indent=2))
    (OUT_DIR / "fleet_noop.md").write_text("```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
