"""pyinfra entry for bench/noop_profile.py: deploy/site.py with every SSH round-trip timed.

Each command pyinfra sends is timed and attributed to (role, kind): the role from the operation's
name (``Role | operation``) or, for facts read while the deploy is planned, from the roles module
on the stack; the kind is `fact`, `op` (an operation's own command) or `connect`. The figures go
to the JSON file named by $HARDKIT_PROFILE_OUT when pyinfra exits.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections import defaultdict

from pyinfra.api import facts as _facts
from pyinfra.api.host import Host

_rows: dict = defaultdict(lambda: [0, 0.0])  # (role, kind) -> [count, seconds]
_in_fact = [False]
_started = time.perf_counter()


def _role_of(host) -> str:
    op_hash = getattr(host, "current_op_hash", None)
    if op_hash:
        names = host.state.op_meta[op_hash].names
        if names:
            return sorted(names)[0].split(" | ", 1)[0]
    frame = sys._getframe(2)
    while frame:
        mod = frame.f_globals.get("__name__", "")
        if mod.startswith("roles.") and mod not in ("roles.ops", "roles.data"):
            return mod
        frame = frame.f_back
    return "(outside roles)"


def _record(role: str, kind: str, seconds: float) -> None:
    row = _rows[(role, kind)]
    row[0] += 1
    row[1] += seconds


_orig_get_fact = _facts._get_fact


def _timed_get_fact(*args, **kwargs):
    _in_fact[0] = True
    try:
        return _orig_get_fact(*args, **kwargs)
    finally:
        _in_fact[0] = False


_facts._get_fact = _timed_get_fact


def _wrap(method: str, kind_of):
    orig = getattr(Host, method)

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return orig(self, *args, **kwargs)
        finally:
            _record(_role_of(self), kind_of(), time.perf_counter() - start)

    setattr(Host, method, timed)


_wrap("run_shell_command", lambda: "fact" if _in_fact[0] else "op")
_wrap("put_file", lambda: "upload")
_wrap("connect", lambda: "connect")


@atexit.register
def _dump() -> None:
    out = os.environ.get("HARDKIT_PROFILE_OUT")
    if out:
        rows = [{"role": r, "kind": k, "count": c, "seconds": s} for (r, k), (c, s) in _rows.items()]
        with open(out, "w") as f:
            json.dump({"pyinfra_seconds": time.perf_counter() - _started, "rows": rows}, f)


from deploy import site  # noqa: E402,F401  (runs the deploy)
