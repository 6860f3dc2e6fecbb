"""pyinfra entry for bench/noop_profile.py: deploy/site.py with its time taken apart.

- every SSH round-trip is timed and filed under (role, kind): kind `fact`, `fact batch` (the one
  command of deploy/fact_batch.py), `op` (an operation's own command), `upload` or `connect`, with
  the target's CPU seconds meanwhile when $HARDKIT_PROFILE_TARGET_CPU names its cpuacct.usage file
  (sandbox/target_cpu.py); the role from the operation's name (``Role | op``) or, for facts read
  while the deploy is planned, from the roles module on the stack;
- each role's wall time: planning (its `apply()`) plus running its operations.
The figures go to the JSON file named by $HARDKIT_PROFILE_OUT when pyinfra exits.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import time
from collections import defaultdict

from pyinfra.api import facts as _facts
from pyinfra.api import operations as _operations
from pyinfra.api.host import Host

from deploy.fact_batch import BATCH_TAIL as _BATCH_TAIL
from roles import ROLE_MODULES

_trips: dict = defaultdict(lambda: [0, 0.0, 0.0])  # (role, kind) -> [count, seconds, target CPU seconds]
#: The target's cpuacct.usage file (sandbox/target_cpu.py), when the bench tracks one target's CPU.
_TARGET_CPU = os.environ.get("HARDKIT_PROFILE_TARGET_CPU")
_roles: dict = defaultdict(float)  # role -> wall seconds (plan + run)
_in_fact = [False]
_started = time.perf_counter()


def _deploy_name(host, op_hash) -> str | None:
    names = host.state.op_meta[op_hash].names if op_hash else None
    return sorted(names)[0].split(" | ", 1)[0] if names else None


def _role_of(host) -> str:
    found = _deploy_name(host, getattr(host, "current_op_hash", None))
    if found:
        return found
    frame = sys._getframe(2)
    while frame:
        mod = frame.f_globals.get("__name__", "")
        if mod in ROLE_MODULES:
            return _DEPLOY_NAMES.get(mod, mod)
        frame = frame.f_back
    return "(outside roles)"


def _target_cpu() -> float:
    try:
        with open(_TARGET_CPU) as f:
            return int(f.read()) / 1e9
    except (OSError, TypeError, ValueError):
        return 0.0


def _wrap_trip(method: str, kind_of):
    orig = getattr(Host, method)

    def timed(self, *args, **kwargs):
        start, cpu = time.perf_counter(), _target_cpu()
        try:
            return orig(self, *args, **kwargs)
        finally:
            kind = kind_of()
            if kind == "fact" and args and str(args[0]).endswith(_BATCH_TAIL):
                kind = "fact batch"
            row = _trips[(_role_of(self), kind)]
            row[0] += 1
            row[1] += time.perf_counter() - start
            row[2] += _target_cpu() - cpu

    setattr(Host, method, timed)



_orig_get_fact = _facts._get_fact


def _get_fact(*args, **kwargs):
    _in_fact[0] = True
    try:
        return _orig_get_fact(*args, **kwargs)
    finally:
        _in_fact[0] = False


_facts._get_fact = _get_fact
_wrap_trip("run_shell_command", lambda: "fact" if _in_fact[0] else "op")
_wrap_trip("put_file", lambda: "upload")
_wrap_trip("connect", lambda: "connect")

_orig_run_host_op = _operations.run_host_op


def _run_host_op(state, host, op_hash):
    start = time.perf_counter()
    try:
        return _orig_run_host_op(state, host, op_hash)
    finally:
        _roles[_deploy_name(host, op_hash) or "(unnamed)"] += time.perf_counter() - start


_operations.run_host_op = _run_host_op

#: roles module -> its @deploy name, so planning time and run time land on one row.
_DEPLOY_NAMES: dict[str, str] = {}
for _name in ROLE_MODULES:
    _mod = importlib.import_module(_name)
    _apply = getattr(_mod, "apply", None)
    if _apply is None:
        continue

    def _planned(_apply=_apply, _mod_name=_name):
        start = time.perf_counter()
        try:
            return _apply()
        finally:
            _roles[_DEPLOY_NAMES.get(_mod_name, _mod_name)] += time.perf_counter() - start

    _DEPLOY_NAMES[_name] = getattr(_apply, "deploy_name", _name)
    _mod.apply = _planned


@atexit.register
def _dump() -> None:
    out = os.environ.get("HARDKIT_PROFILE_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"pyinfra_seconds": time.perf_counter() - _started,
                       "trips": [{"role": r, "kind": k, "count": c, "seconds": s, "target_cpu": t}
                                 for (r, k), (c, s, t) in _trips.items()],
                       "roles": _roles}, f)


from deploy import site  # noqa: E402,F401  (runs the deploy)
