"""No-op redeploy and verify of a fleet: 1, 3, 6 and 12 nspawn hosts, with the ratio to one host.

Each size gets its own lab, deployed once from fresh (timed: fresh target -> hardened, with the
bot), deployed again (the fact batch learns a deployed host's questions), then redeployed with
nothing to change (timed) and verified (timed). Every deploy and verify is the real `hardkit`
command in a child process; the controller's peak memory is the largest resident set among that
child and its own children (pyinfra), from wait4's rusage, as is the controller's CPU time (user +
system of that whole tree, apart from the targets' that share this machine). The targets' CPU
during the no-op (user + system of every process in their containers, sandbox/target_cpu.py) is
printed beside the controller's, per host too: on this machine both share its CPUs, so the sum of
the two per host, times the hosts, over the CPUs, is the least a size can take. The load average at
the start of each size is printed: on a shared machine compare figures within one run.
Written also as JSON and Markdown under reports/bench/. Sizes: HARDKIT_BENCH_SIZES=1,3 to measure fewer;
HARDKIT_BENCH_VERIFY=0 leaves verify out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import lab, target_cpu  # noqa: E402
from sandbox.errors import LabError  # noqa: E402

#: The lab this bench boots (HARDKIT_BENCH_PREFIX overrides it, e.g. to keep to a prefix on a shared machine).
PREFIX = os.environ.get("HARDKIT_BENCH_PREFIX", "bfleet")
#: Sizes of fleet measured, in hosts (HARDKIT_BENCH_SIZES overrides them, comma-separated).
SIZES = [int(s) for s in os.environ.get("HARDKIT_BENCH_SIZES", "1,3,6,12").split(",")]
#: HARDKIT_BENCH_REUSE=1 measures every size on one lab already up and deployed (see reused_sizes).
REUSE = os.environ.get("HARDKIT_BENCH_REUSE") == "1"
#: HARDKIT_BENCH_VERIFY=0 measures the no-op only (verify of 12 hosts takes minutes on a loaded machine).
VERIFY = os.environ.get("HARDKIT_BENCH_VERIFY", "1") != "0"
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "reports" / "bench"


def hardkit(*args: str) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """Run `hardkit ARGS`; return (wall seconds, controller CPU seconds, peak MB of the largest process
    in its tree, result). wait4 reports the child's rusage together with that of every descendant it
    reaped (pyinfra, pytest, their ssh clients): user + system time is the controller's CPU for the
    command, apart from the targets' (their processes are not the controller's children), and
    ru_maxrss is the largest of those processes. An OpenSSH ControlMaster that detached itself is
    not reaped by the tree and is not counted (verify's connection multiplexers: small)."""
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
    cpu = usage.ru_utime + usage.ru_stime
    return (seconds, cpu, usage.ru_maxrss / 1024,
            subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


def deploy_ok(path: Path, label: str, limit: list[str] | None = None) -> tuple[float, float, float, dict]:
    seconds, cpu, peak, res = hardkit("deploy", str(path), "--json", *(["--limit", ",".join(limit)] if limit else []))
    summary = json.loads(res.stdout) if res.stdout.strip() else {}
    if res.returncode != 0:
        raise SystemExit(f"bench: {label} deploy failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return seconds, cpu, peak, summary


def targets_cpu(names: list[str]) -> float:
    """CPU seconds the named targets of the lab have used since they were tracked (target_cpu.track)."""
    from sandbox.target import load as load_target

    return sum(target_cpu.usage(load_target(PREFIX, name)) or 0.0 for name in names)


def measure(path: Path, n: int, load: float, fresh: float | None, fresh_mb: float,
            limit: list[str] | None = None) -> dict:
    """The timed no-op redeploy and verify of a deployed lab (or of `limit`, its first n hosts)."""
    from deploy.inventory import load as load_inventory
    from sandbox.target import load as load_target

    names = limit or [h.name for h in load_inventory(path).hosts]
    tracked = all(target_cpu.track(load_target(PREFIX, name)) for name in names)
    before = targets_cpu(names)
    noop, noop_cpu, noop_mb, summary = deploy_ok(path, "no-op", limit)
    noop_target_cpu = targets_cpu(names) - before if tracked else None
    verify = verify_cpu = verify_mb = None
    if VERIFY:
        verify, verify_cpu, verify_mb, res = hardkit("verify", str(path), "--report-dir",
                                                     str(OUT_DIR / f"fleet-verify-{n}"),
                                                     *(["--limit", ",".join(limit)] if limit else []))
    changed = sum(h["changed_count"] for h in summary["hosts"].values())
    row = {"hosts": n, "load_at_start": round(load, 2), "fresh": fresh, "noop": noop, "noop_cpu": noop_cpu,
           "noop_target_cpu": noop_target_cpu,
           "noop_changed": changed, "verify": verify, "verify_cpu": verify_cpu,
           "verify_ok": res.returncode == 0 if VERIFY else None, "peak_mb": max(fresh_mb, noop_mb, verify_mb or 0)}
    print(f"  measured {n} host(s): {row}", file=sys.stderr, flush=True)
    return row


def one_size(n: int) -> dict:
    lab.down(PREFIX, log=lambda m: None)
    load = os.getloadavg()[0]
    try:
        path = lab.up(count=n, prefix=PREFIX, log=lambda m: None)
        fresh, _, fresh_mb, _ = deploy_ok(path, "fresh")
        deploy_ok(path, "second")  # the batch learns the questions of a deployed host
        return measure(path, n, load, fresh, fresh_mb)
    finally:
        lab.down(PREFIX, log=lambda m: None)


def reused_sizes(sizes: list[int]) -> list[dict]:
    """HARDKIT_BENCH_REUSE=1: every size on the lab PREFIX already up and deployed (boot it, deploy it
    twice, e.g. `hardkit sandbox up --count 12 --name PREFIX`): size n is `--limit` its first n hosts,
    while the others stay up and idle. No fresh figure; the lab is left up."""
    from deploy.inventory import load as load_inventory
    from sandbox.lab_inventory import inventory_path

    path = inventory_path(PREFIX)
    names = [h.name for h in load_inventory(path).hosts]
    if len(names) < max(sizes):
        raise SystemExit(f"bench: the lab {PREFIX} has {len(names)} hosts, fewer than {max(sizes)}")
    rows = []
    for n in sizes:
        rows.append(measure(path, n, os.getloadavg()[0], None, 0.0, names[:n]))
        write(rows)
    return rows


def table(rows: list[dict]) -> list[str]:
    one = rows[0] if "noop" in rows[0] else None
    lines = [f"fleet on the nspawn tier (all hosts of a size at once; {os.cpu_count()} CPUs, load at start shown)",
             "  hosts  load   fresh s   no-op s  x of 1  ctl CPU s  x of 1  tgt CPU s  per host"
             "   verify s  x of 1  ctl CPU s  x of 1  peak MB"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['hosts']:5d} {r['load_at_start']:5.1f}  not measured: {r['error']}")
            continue
        ratio = (lambda k: f"{r[k] / one[k]:7.2f}" if r[k] is not None else f"{'-':>7}") if one else (
            lambda k: f"{'-':>7}")
        num = lambda k: f"{r[k]:10.2f}" if r[k] is not None else f"{'-':>10}"  # noqa: E731
        fresh = f"{r['fresh']:9.1f}" if r["fresh"] is not None else f"{'-':>9}"
        tgt = r.get("noop_target_cpu")
        tgt = f"{tgt:10.2f} {tgt / r['hosts']:9.2f}" if tgt is not None else f"{'-':>10} {'-':>9}"
        lines.append(f"  {r['hosts']:5d} {r['load_at_start']:5.1f} {fresh} {r['noop']:9.2f} {ratio('noop')} "
                     f"{r['noop_cpu']:10.2f} {ratio('noop_cpu')} {tgt} {num('verify')} {ratio('verify')} "
                     f"{num('verify_cpu')} {ratio('verify_cpu')} {r['peak_mb']:8.0f}"
                     + ("" if r["noop_changed"] == 0 else f"  (no-op changed {r['noop_changed']}!)")
                     + ("" if r["verify_ok"] is not False else "  (verify failed)"))
    lines.append("  ctl CPU s: user + system seconds of the hardkit command and every process it reaped (pyinfra,")
    lines.append("  pytest, ssh clients), the controller's own work apart from the targets' sharing these CPUs")
    lines.append("  tgt CPU s: user + system seconds of every process in the targets' containers during the no-op")
    lines.append("  (per host: divided by the hosts); the least a size can take here is (ctl + tgt CPU) / CPUs")
    lines.append("  peak MB: the largest process of the hardkit command (controller or pyinfra), over the size's runs")
    if REUSE:
        lines.append(f"  one lab of {max(SIZES)} hosts, deployed before the bench; a size of n is --limit its first n"
                     " hosts (the others up and idle); no fresh figure")
    return lines


def write(rows: list[dict]) -> None:
    """Written after each size: a long run that stops keeps what it measured."""
    (OUT_DIR / "fleet_noop.json").write_text(json.dumps({"rows": rows, "reused_lab": REUSE}, indent=2))
    (OUT_DIR / "fleet_noop.md").write_text("```\n" + "\n".join(table(rows)) + "\n```\n")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/fleet_noop.py needs root (it boots lab targets)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if REUSE:
        rows = reused_sizes(SIZES)
    else:
        rows = []
        for n in SIZES:
            try:
                rows.append(one_size(n))
            except LabError as e:  # a lab that does not boot (a loaded machine): said, and the next size tried
                rows.append({"hosts": n, "load_at_start": round(os.getloadavg()[0], 2),
                             "error": f"the lab did not boot: {str(e).splitlines()[0]}"})
            write(rows)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
