"""Lynis' hardening index on a pristine lab target and on the same target after `hardkit deploy`.

    bench/lynis_index.py [--tier vm|nspawn] [--only-os-roles] [--keep]

Boots one fresh target (lab `osbenchv` or `osbenchn`, by tier), installs Debian's `lynis` on it (the bench does,
not the roles), runs `lynis audit system --quick --no-colors`, reads `hardening_index=` from
its report file, deploys, and runs Lynis again. Prints both figures with the tier: compare
figures within one tier only (in a container Lynis sees the host's kernel, modules and sysctls).
The vm tier is the real figure (QEMU, software CPU: a run takes many minutes).

--only-os-roles deploys the baseline and the OS-baseline roles (issue 4) without the access
roles, to attribute the change to them. Lab traffic stays in the lab: NTP points at a responder
in the lab's allowed-client namespace.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deploy import runner  # noqa: E402
from deploy.inventory import load  # noqa: E402
from tests.integration.labkit import boot  # noqa: E402
from tests.integration.oslab import LabNtp, derived_inventory, root  # noqa: E402

PREFIX = "osbench"  # + the tier's initial, so a vm and an nspawn run never share a lab
REPORT = "/root/lynis-report.dat"
OS_ROLES = ["roles.baseline", "roles.updates", "roles.kernel", "roles.accounts", "roles.filesystem", "roles.audit",
            "roles.time_logs"]


def lynis_index(lab, name: str) -> tuple[int, int, int]:
    """(hardening index, warnings, suggestions) of one Lynis run on the target."""
    res = root(lab, name, f"lynis audit system --quick --no-colors --report-file {REPORT} >/dev/null 2>&1; "
                          f"grep -E '^(hardening_index|warning\\[\\]|suggestion\\[\\])=' {REPORT}", timeout=3600)
    lines = res.stdout.splitlines()
    index = next((int(line.split("=", 1)[1]) for line in lines if line.startswith("hardening_index=")), None)
    if index is None:
        raise SystemExit(f"no hardening_index in Lynis' report: {res.stdout[-500:]} {res.stderr[-500:]}")
    return index, sum(line.startswith("warning[]") for line in lines), sum(line.startswith("suggestion[]")
                                                                             for line in lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tier", choices=["vm", "nspawn"], default="vm")
    p.add_argument("--only-os-roles", action="store_true", help="deploy baseline + OS roles, not the access roles")
    p.add_argument("--keep", action="store_true", help="leave the target running")
    args = p.parse_args(argv)
    started = time.monotonic()
    lab = boot(PREFIX + args.tier[0], count=1, tier=args.tier)
    name = lab.names[0]
    try:
        with LabNtp(lab) as ntp, tempfile.TemporaryDirectory(prefix="hardkit-bench-") as tmp:
            inv_path = derived_inventory(lab, Path(tmp), ntp_servers=[ntp.address])
            installed = root(lab, name, "apt-get update -q >/dev/null 2>&1; "
                                        "apt-get install -y -q lynis >/dev/null 2>&1; echo rc=$?", timeout=1800)
            if "rc=0" not in installed.stdout:
                raise SystemExit(f"could not install lynis on the target: {installed.stdout}{installed.stderr}")
            before = lynis_index(lab, name)
            site = runner.SITE
            if args.only_os_roles:
                site = Path(tmp) / "os_site.py"
                site.write_text("import importlib\n" + "".join(
                    f"importlib.import_module({m!r}).apply()\n" for m in OS_ROLES))
            inv = load(inv_path)
            result = runner.deploy(inv, inv.hosts, stream=sys.stderr, site=site)
            if not result.ok:
                raise SystemExit(f"deploy failed: {[(h.failed, h.error) for h in result.hosts.values()]}")
            after = lynis_index(lab, name)
    finally:
        if not args.keep:
            lab.down()
    what = "baseline + OS roles (issue 4)" if args.only_os_roles else "full hardkit deploy"
    print(f"Lynis hardening index, tier {args.tier} ({'real kernel' if args.tier == 'vm' else 'container: host kernel'})")
    print(f"  undeployed Debian 12 target : {before[0]:3d}   ({before[1]} warnings, {before[2]} suggestions)")
    print(f"  after {what:<22}: {after[0]:3d}   ({after[1]} warnings, {after[2]} suggestions)")
    print(json.dumps({"tier": args.tier, "deploy": what, "before": before[0], "after": after[0],
                      "warnings": [before[1], after[1]], "suggestions": [before[2], after[2]],
                      "seconds": round(time.monotonic() - started)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
