"""Per-host progress of a deploy, read from pyinfra's own lines instead of showing all of them.

pyinfra prints `--> Starting operation: Role | operation` once per operation and then one
`[host] Success | No changes | Error...` line per host. `HostProgress` is a stream the runner
writes those lines to: it prints one line per host each time that host moves on to another role
(operations done, changed, failed so far), and every error line in full. `-v` shows pyinfra's
lines instead.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

_START = re.compile(r"^--> Starting operation: (?P<name>.+?)\s*$")
_HOST = re.compile(r"^\s*\[(?P<host>[^\]]+)\]\s+(?P<what>.*)$")


class HostProgress:
    def __init__(self, out=sys.stderr):
        self.out = out
        self.role = ""
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # done, changed, failed
        self.shown_role: dict[str, str] = {}

    def write(self, text: str) -> None:
        for line in text.splitlines():
            self._line(line)

    def flush(self) -> None:
        self.out.flush()

    def _line(self, line: str) -> None:
        m = _START.match(line)
        if m:
            self.role = m.group("name").split(" | ", 1)[0]
            return
        m = _HOST.match(line)
        if not m:
            return
        host, what = m.group("host"), m.group("what")
        counts = self.counts[host]
        if what.startswith(("Success", "No changes")):
            counts[0] += 1
            counts[1] += what.startswith("Success")
        elif "rror" in what:
            counts[0] += 1
            counts[2] += 1
            print(f"  {host}: {self.role}: {what}", file=self.out)
        else:
            return
        if self.shown_role.get(host) != self.role:
            self.shown_role[host] = self.role
            print(f"  {host}: {self.role} (done {counts[0]}, changed {counts[1]}, failed {counts[2]})",
                  file=self.out)
