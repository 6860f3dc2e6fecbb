"""The bot on the VPS: a fresh nspawn target to a hardened host with the bot running, in one run.

Prints figures and ratios (the machine is shared and noisy: compare within one run):
  - fresh deploy without the bot (bot_enabled=false) and with it (the issue's target: <= 60 s),
    each on its own pristine target, and what the bot adds;
  - the no-op redeploy of the host with the bot;
  - the wheelhouse build on the controller (cold cache), which a later deploy of the same
    release does not pay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab_loop import timed  # noqa: E402
from deploy import runner  # noqa: E402
from deploy.inventory import load  # noqa: E402
from roles import bot_release  # noqa: E402
from sandbox import lab  # noqa: E402

PREFIX = "benchbot"


def fresh(**changes) -> Path:
    lab.down(PREFIX, log=lambda m: None)
    path = lab.up(count=1, prefix=PREFIX, log=lambda m: None)
    if changes:
        extra = "".join(f"    _d[{k!r}] = {v!r}\n" for k, v in changes.items())
        variant = path.with_name("inventory_variant.py")
        variant.write_text(path.read_text() + "\nfor _name, _d in sandbox:\n" + extra)
        return variant
    return path


def deploy(path: Path) -> tuple[float, runner.RunResult]:
    inv = load(path)
    seconds, result = timed(lambda: runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL))
    if not result.ok:
        raise SystemExit(f"bench: deploy failed: {[(h.failed, h.error) for h in result.hosts.values()]}")
    return seconds, result


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/bot_deploy.py needs root (it boots lab targets)")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HARDKIT_CACHE"] = cache
        bot_release.CACHE = Path(cache) / "releases"
        build, release = timed(bot_release.current)
        size = release.tarball.stat().st_size / 1e6
        print(f"wheelhouse build, cold cache: {build:.1f} s ({size:.1f} MB, release {release.name})")
        try:
            without, _ = deploy(fresh(bot_enabled=False))
            with_bot, result = deploy(fresh())
            ops = len(next(iter(result.hosts.values())).changed)
            print(f"fresh target -> hardened, no bot:          {without:6.1f} s")
            print(f"fresh target -> hardened, bot running:     {with_bot:6.1f} s  ({ops} operations changed; "
                  f"target <= 60 s; x{with_bot / without:.2f} of no bot, the bot adds {with_bot - without:.1f} s)")
            noop, _ = deploy(lab_inventory_path())
            print(f"no-op redeploy, bot running:               {noop:6.1f} s  (x{noop / with_bot:.2f} of the fresh deploy)")
        finally:
            lab.down(PREFIX, log=lambda m: None)


def lab_inventory_path() -> Path:
    from sandbox import lab_inventory
    return lab_inventory.inventory_path(PREFIX)


if __name__ == "__main__":
    main()
