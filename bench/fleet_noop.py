"""No-op redeploy and verify of a fleet: 1, 3, 6 and 12 nspawn hosts, with the ratio to one host.

Each size gets its own lab, deployed once from fresh (timed: fresh target -> hardened, with the
bot), deployed again (the fact batch learns a deployed host's questions), then redeployed with
nothing to change (timed) and verified (timed). Every deploy and verify is the real `hardkit`
command in a child process; the controller's peak memory is the largest resident set among that
child and its own children (pyinfra), from wait4's rusage. The load average at the start of each
size is printed: on a shared machine compare figures within one run.
Written also as JSON and Markdown under reports/bench/. Sizes: HARDKIT_BENCH_SIZES=1,3 to measure fewer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import lab  # noqa: E402
from sandbox.errors import LabError  # noqa: E402

#: The lab this bench boots (HARDKIT_BENCH_PREFIX overrides it, e.g. to keep to a prefix on a shared machine).
PREFIX = os.environ.get("HARDKIT_BENCH_PREFIX", "bfleet")
#: Sizes of fleet measured, in hosts (HARDKIT_BENCH_SIZES overrides them, comma-separated).
SIZES = [int(s) for s in os.environ.get("HARDKIT_BENCH_SIZES", "1,3,6,12").split(",")]
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "reports" / "bench"


def hardkit(*args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `hardkit ARGS`; return (wall seconds, peak MB of the largest process in its tree, result).
    wait4 reports the child's rusage with that of the children it reaped: ru_maxrss is the largest."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with ThreadPoolExecutor(2) as pool:
        out, err = pool.submit(proc.stdout.read), pool.submit(proc.stderr.read)
        _, status, usage = os.wait4(proc.pid, 0)
        out, err = out.result(), err.result()
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def deploy_ok(path: Path, label: str) -> tuple[float, float, dict]:
    seconds, peak, res = hardkit("deploy", str(path), "--json")
    summary = json.loads(res.stdout) if res.stdout.strip() else {}
    if res.returncode != 0:
        raise SystemExit(f"bench: {label} deploy failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return seconds, peak, summary


def one_size(n: int) -> dict:
    lab.down(PREFIX, log=lambda m: None)
    load = os.getloadavg()[0]
    try:
        path = lab.up(count=n, prefix=PREFIX, log=lambda m: None)
        fresh, fresh_mb, _ = deploy_ok(path, "fresh")
        deploy_ok(path, "second")  # the batch learns the questions of a deployed host
        noop, noop_mb, summary = deploy_ok(path, "no-op")
        verify, verify_mb, res = hardkit("verify", str(path), "--report-dir", str(OUT_DIR / f"fleet-verify-{n}"))
        changed = sum(h["changed_count"] for h in summary["hosts"].values())
        row = {"hosts": n, "load_at_start": round(load, 2), "fresh": fresh, "noop": noop, "noop_changed": changed,
               "verify": verify, "verify_ok": res.returncode == 0, "peak_mb": max(fresh_mb, noop_mb, verify_mb)}
        print(f"  measured {n} host(s): {row}", file=sys.stderr, flush=True)
        return row
    finally:
        lab.down(PREFIX, log=lambda m: None)


def table(rows: list[dict]) -> list[str]:
    one = rows[0] if "noop" in rows[0] else None
    lines = [f"fleet on the nspawn tier (all hosts of a size at once; {os.cpu_count()} CPUs, load at start shown)",
             "  hosts  load   fresh s   no-op s  x of 1 host   verify s  x of 1 host   peak MB"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['hosts']:5d} {r['load_at_start']:5.1f}  not measured: {r['error']}")
            continue
        ratio = (lambda k: f"{r[k] / one[k]:11.2f}") if one else (lambda k: f"{'-':>11}")
        lines.append(f"  {r['hosts']:5d} {r['load_at_start']:5.1f} {r['fresh']:9.1f} {r['noop']:9.2f} "
                     f"{ratio('noop')} {r['verify']:10.2f} {ratio('verify')} {r['peak_mb']:9.0f}"
                     + ("" if r["noop_changed"] == 0 else f"  (no-op changed {r['noop_changed']}!)")
                     + ("" if r["verify_ok"] else "  (verify failed)"))
    lines.append("  peak MB: the largest process of the hardkit command (controller or pyinfra), over the size's runs")
    return lines


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/fleet_noop.py needs root (it boots lab targets)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in SIZES:  # written after each size: a long run that stops keeps what it measured
        try:
            rows.append(one_size(n))
        except LabError as e:  # a lab that does not boot (a loaded machine): said, and the next size tried
            rows.append({"hosts": n, "load_at_start": round(os.getloadavg()[0], 2),
                         "error": f"the lab did not boot: {str(e).splitlines()[0]}"})
        (OUT_DIR / "fleet_noop.json").write_text(json.dumps({"rows": rows}, indent=2))
        (OUT_DIR / "fleet_noop.md").write_text("```\n" + "\n".join(table(rows)) + "\n```\n")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
