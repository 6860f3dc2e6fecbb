"""Lab and loop figures: time to a pristine target answering SSH, and a no-op redeploy.

Prints figures and ratios (this machine is shared and noisy: compare within one run).
  - boot: N = 1, 3, 6 nspawn targets at once, wall time until every one answers SSH
  - vm:   one vm-tier target restored from the snapshot (if the vm tier is available)
  - redeploy: a no-op `hardkit deploy` on 1 and on 6 hosts (the figure to beat: under 5 s for one host)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import runner  # noqa: E402
from deploy.inventory import load  # noqa: E402
from sandbox import lab  # noqa: E402
from sandbox.errors import LabError  # noqa: E402

PREFIX = "bench"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def boot(count: int, tier: str = "nspawn") -> tuple[float, Path]:
    lab.down(PREFIX, log=lambda m: None)
    return timed(lambda: lab.up(count=count, tier=tier, prefix=PREFIX, log=lambda m: None))


def redeploy(path: Path) -> float:
    inv = load(path)
    first = runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL)
    if not first.ok:
        raise SystemExit(f"bench: first deploy failed: {[(h.failed, h.error) for h in first.hosts.values()]}")
    seconds, again = timed(lambda: runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL))
    if again.changed_ops:
        print(f"  warning: the no-op redeploy changed {again.changed_ops} operation(s)")
    return seconds


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/lab_loop.py needs root (it boots lab targets)")
    try:
        print("time to SSH, nspawn tier (all targets booted at once):")
        boots = {}
        for n in (1, 3, 6):
            boots[n], _ = boot(n)
            print(f"  N={n}: {boots[n]:.2f} s  ({boots[n] / n:.2f} s per target, x{boots[n] / boots[1]:.1f} of N=1)")
        print("no-op redeploy (target: < 5 s for one host):")
        _, path1 = boot(1)
        one = redeploy(path1)
        print(f"  1 host: {one:.2f} s")
        _, path6 = boot(6)
        six = redeploy(path6)
        print(f"  6 hosts: {six:.2f} s  (x{six / one:.1f} of one host for 6x the hosts)")
        try:
            secs, _ = boot(1, tier="vm")
            print(f"time to SSH, vm tier from snapshot: {secs:.2f} s  (x{secs / boots[1]:.0f} of nspawn)")
        except LabError as e:
            print(f"vm tier: not measured ({str(e).splitlines()[0]})")
    finally:
        lab.down(PREFIX, log=lambda m: None)


if __name__ == "__main__":
    main()
