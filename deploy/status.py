"""`hardkit status INVENTORY`: what is deployed where, from each host's deploy record, and drift.

Per host (in parallel, over one SSH login each, as the deploy would log in): the record written
by roles/record.py (commit and dirty flag, bot release, time, operator) and whether each managed
file still has the digest the record holds. Changes nothing.
"""

from __future__ import annotations

import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from deploy import connect
from deploy.botctl import Session
from deploy.inventory import Host
from roles.record import RECORD_FILE

EXIT_OK, EXIT_DRIFT, EXIT_UNREACHABLE = 0, 1, 3


@dataclass
class HostStatus:
    host: str
    record: dict | None = None  # None: never deployed with a record
    drifted: list[str] = field(default_factory=list)  # managed files whose digest differs (or that are gone)
    error: str = ""  # unreachable or unreadable

    @property
    def ok(self) -> bool:
        return not self.error and self.record is not None and not self.drifted


def drift(record: dict, sha256sum_lines: list[str]) -> list[str]:
    """The record's files whose content on the host is not what the record says (missing included)."""
    live = {}
    for line in sha256sum_lines:
        digest, _, path = line.partition("  ")
        if path:
            live[path] = digest
    return sorted(p for p, d in (record.get("files") or {}).items() if live.get(p) != d)


def read_status(h: Host) -> HostStatus:
    try:
        s = Session(h)
    except (connect.LoginError, OSError) as e:
        return HostStatus(h.name, error=f"unreachable: {e}")
    try:
        rc, out, err = s.run(f"cat {RECORD_FILE} 2>/dev/null", root=True)
        if rc != 0 or not out.strip():
            return HostStatus(h.name)
        try:
            record = json.loads(out)
        except ValueError:
            return HostStatus(h.name, error=f"{RECORD_FILE} is not JSON")
        paths = " ".join(shlex.quote(p) for p in sorted(record.get("files") or {}))
        _, sums, _ = s.run(f"sha256sum {paths} 2>/dev/null; true", root=True) if paths else (0, "", "")
        return HostStatus(h.name, record, drift(record, sums.splitlines()))
    finally:
        s.close()


def render_row(st: HostStatus) -> str:
    if st.error:
        return f"{st.host}  UNREACH  {st.error}"
    if st.record is None:
        return f"{st.host}  -        no deploy record (never deployed by this hardkit)"
    r = st.record
    commit = (r.get("commit") or "no-git")[:12] + (" (dirty)" if r.get("dirty") else "")
    state = "drifted " if st.drifted else "ok      "
    line = (f"{st.host}  {state} commit {commit}  bot {r.get('bot_release') or '-'}  "
            f"at {r.get('deployed_at')}  by {r.get('operator')}  {len(r.get('files') or {})} files")
    if st.drifted:
        line += f"; changed since: {', '.join(st.drifted)}"
    return line


def run(hosts: list[Host], as_json: bool = False) -> int:
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        rows = list(pool.map(read_status, hosts))
    if as_json:
        print(json.dumps({r.host: {**asdict(r), "ok": r.ok} for r in rows}, indent=2))
    else:
        for r in rows:
            print(render_row(r), file=sys.stdout)
    if any(r.error for r in rows):
        return EXIT_UNREACHABLE
    return EXIT_OK if all(r.ok for r in rows) else EXIT_DRIFT
