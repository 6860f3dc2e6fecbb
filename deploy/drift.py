"""`hardkit drift INVENTORY`: per host, what a deploy would change and which controls fail now.

Two read-only looks: pyinfra's dry run (the names of the operations that would change
something, credentials that would be sent or removed) and the compliance suite (controls that
fail now). Neither changes a host. Exit 1 when any host drifted, 3 when one could not be
reached, 0 when every host is as the last deploy left it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from deploy import runner, verify_run


def planned_changes(raw: dict | None) -> dict[str, list[str]]:
    """{host: operation names} a deploy would change, from pyinfra's dry-run plan (its `results` is None
    with --dry). Operations that run only after an earlier change (`_if`: reloads, restarts) are left
    out: pyinfra lists them as conditional on every host, and the change they follow is listed itself."""
    out: dict[str, list[str]] = {}
    for op in (raw or {}).get("plan") or []:
        for host in op.get("hosts_with_change", []):
            out.setdefault(host, []).append(op["name"])
    return out


def run(inv, hosts, label: str, identity: str | None = None, out=sys.stdout) -> int:
    with open(os.devnull, "w") as sink:
        result = runner.deploy(inv, hosts, dry=True, identity=identity, stream=sink)
    with tempfile.TemporaryDirectory(prefix="hardkit-drift-") as tmp:
        doc, rc = verify_run.run(inv.path, label, Path(tmp), limit=[h.name for h in hosts], quiet=True)
    failing: dict[str, list[str]] = {}
    for r in (doc or {}).get("controls", []):
        if r["status"] in ("FAIL", "ERROR"):
            failing.setdefault(r["host"], []).append(f"{r['control']} ({r['status'].lower()}): {r['title']}")
    unreachable = {h["name"]: h["error"] for h in (doc or {}).get("hosts", []) if not h["reachable"]}
    planned = planned_changes(result.raw)
    code = verify_run.EXIT_OK
    for h in hosts:
        res = result.hosts[h.name]
        problem = res.error or unreachable.get(h.name) or (doc is None and "the compliance suite did not run")
        if problem:
            print(f"{h.name}: UNKNOWN: {problem}", file=out)
            code = verify_run.EXIT_UNREACHABLE
            continue
        creds = res.credentials
        would = planned.get(h.name, []) + ([f"credentials: send {', '.join(creds.sent) or '-'}, remove "
                                      f"{', '.join(creds.removed) or '-'}"] if creds and creds.changed else [])
        would += [f"FAILED in the dry run: {op}" for op in res.failed]
        if not would and not failing.get(h.name):
            print(f"{h.name}: no drift", file=out)
            continue
        code = max(code, verify_run.EXIT_FAILED)
        print(f"{h.name}: DRIFT: a deploy would change {len(would)}, {len(failing.get(h.name, []))} "
              "control(s) fail now", file=out)
        for op in would:
            print(f"  would change: {op}", file=out)
        for control in failing.get(h.name, []):
            print(f"  failing: {control}", file=out)
    return code
