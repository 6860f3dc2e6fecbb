"""Where a no-op redeploy of one nspawn host spends its time, with pyinfra as it comes and with
hardkit's round-trip cuts (deploy/fact_batch.py, deploy/op_order.py).

Prints, for each of the two (one target, deployed once, then redeployed with nothing to change):
  - the controller's phases: logins and lockout pre-flight, credentials, the pyinfra process;
  - inside pyinfra: SSH round-trips by kind (facts, operation commands, uploads, connection) and
    the rest (planning, Python);
  - per role: wall time and round-trips.
Written also as JSON and Markdown under reports/bench/. The machine is shared and noisy: compare
figures within one run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import credentials, runner  # noqa: E402
from deploy.inventory import load  # noqa: E402
from sandbox import lab  # noqa: E402

#: The lab this bench boots (HARDKIT_BENCH_PREFIX overrides it, e.g. to keep to a prefix on a shared machine).
PREFIX = os.environ.get("HARDKIT_BENCH_PREFIX", "bnoop")
REPO = Path(__file__).resolve().parent.parent
PROFILE_SITE = REPO / "bench" / "sites" / "profile_site.py"  # not bench/*.py: `make bench` runs those
OUT_DIR = REPO / "reports" / "bench"


def phases_of_one_deploy(path: Path, plain: bool) -> dict:
    """One deploy through the profiling site; the controller's phases timed around runner.deploy."""
    timings: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[name] += time.perf_counter() - start
        return wrapper

    profile = OUT_DIR / "noop_profile.pyinfra.json"
    env = {"HARDKIT_PROFILE_OUT": str(profile), "HARDKIT_PLAIN_PYINFRA": "1" if plain else "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    real_preflight, real_sync = runner.preflight, credentials.sync_all
    runner.preflight = timed("logins and lockout pre-flight", real_preflight)
    credentials.sync_all = timed("credentials", real_sync)
    try:
        inv = load(path)
        start = time.perf_counter()
        result = runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL, site=PROFILE_SITE)
        total = time.perf_counter() - start
    finally:
        runner.preflight, credentials.sync_all = real_preflight, real_sync
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not result.ok:
        raise SystemExit(f"bench: deploy failed: {[(h.failed, h.error) for h in result.hosts.values()]}")
    inside = json.loads(profile.read_text())
    profile.unlink()
    pyinfra_process = total - sum(timings.values())
    return {"total": total, "changed": result.changed_ops,
            "unchanged": sum(len(h.unchanged) for h in result.hosts.values()),
            "phases": {**timings, "pyinfra process": pyinfra_process},
            "pyinfra_inside": inside["pyinfra_seconds"], "trips": inside["trips"], "roles": inside["roles"]}


def by_kind(run: dict) -> dict[str, list]:
    kinds: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for t in run["trips"]:
        kinds[t["kind"]][0] += t["count"]
        kinds[t["kind"]][1] += t["seconds"]
    return kinds


def report(before: dict, after: dict) -> list[str]:
    lines = [f"no-op redeploy of one nspawn host ({after['unchanged']} operations, {after['changed']} changed)",
             f"  pyinfra as it comes:          {before['total']:6.2f} s",
             f"  with hardkit's round-trip cuts: {after['total']:6.2f} s  (x{before['total'] / after['total']:.1f} "
             f"faster; target <= 5 s)", "", "controller phases (s)            before   after"]
    for phase in before["phases"]:
        lines.append(f"  {phase:<30} {before['phases'][phase]:7.2f} {after['phases'].get(phase, 0):7.2f}")
    lines += ["", "inside pyinfra: SSH round-trips   before (n, s)     after (n, s)"]
    kb, ka = by_kind(before), by_kind(after)
    for kind in sorted(set(kb) | set(ka)):
        b, a = kb.get(kind, [0, 0.0]), ka.get(kind, [0, 0.0])
        lines.append(f"  {kind:<28} {b[0]:5d} {b[1]:7.2f}    {a[0]:5d} {a[1]:7.2f}")
    for label, run, kinds in (("before", before, kb), ("after", after, ka)):
        rest = run["pyinfra_inside"] - sum(s for _, s in kinds.values())
        lines.append(f"  planning and Python ({label}):  {rest:6.2f} s of {run['pyinfra_inside']:.2f} s in the deploy file; "
                     f"start-up and connection outside it: {run['phases']['pyinfra process'] - run['pyinfra_inside']:.2f} s")
    lines += ["", "per role: wall s (facts asked)    before          after"]
    trips_b, trips_a = defaultdict(int), defaultdict(int)
    for run, trips in ((before, trips_b), (after, trips_a)):
        for t in run["trips"]:
            trips[t["role"]] += t["count"]
    for role in sorted(before["roles"], key=lambda r: -before["roles"][r]):
        lines.append(f"  {role:<30} {before['roles'][role]:6.2f} ({trips_b[role]:3d})   "
                     f"{after['roles'].get(role, 0):6.2f} ({trips_a[role]:3d})")
    return lines


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/noop_profile.py needs root (it boots a lab target)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    lab.down(PREFIX, log=lambda m: None)
    try:
        path = lab.up(count=1, prefix=PREFIX, log=lambda m: None)
        inv = load(path)
        first = runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL)
        if not first.ok:
            raise SystemExit(f"bench: first deploy failed: {[(h.failed, h.error) for h in first.hosts.values()]}")
        before = phases_of_one_deploy(path, plain=True)
        phases_of_one_deploy(path, plain=False)  # the batch learns this host's questions
        after = phases_of_one_deploy(path, plain=False)
    finally:
        lab.down(PREFIX, log=lambda m: None)
    lines = report(before, after)
    print("\n".join(lines))
    (OUT_DIR / "noop_profile.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
    (OUT_DIR / "noop_profile.md").write_text("```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
