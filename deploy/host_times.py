"""When each host ran each operation: the evidence that `--parallel N` deploys hosts at once and
never more than N of them.

pyinfra plans every host at once (its facts) and then runs one operation at a time across the
hosts, both on at most `--parallel` hosts at once (one pool of greenlets). Inside the pyinfra
process, `install()` (called by deploy/site.py) records each host's operation intervals through
pyinfra's own callbacks and writes them, when pyinfra exits, to the file the runner names in
$HARDKIT_HOST_TIMES: `{host: [[start, end], ...]}` in seconds since the epoch. The runner reads
them back (`read`) and `hardkit deploy --json` shows each host's first start, last end and the
most hosts seen running an operation at once (`peak_at_once`).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

#: The environment variable naming the file pyinfra writes the intervals to (set by deploy/runner.py).
ENV = "HARDKIT_HOST_TIMES"


def install() -> None:
    """Record every host's operation intervals in this pyinfra run (no-op unless $HARDKIT_HOST_TIMES is set)."""
    out = os.environ.get(ENV)
    if not out:
        return
    from pyinfra import state
    from pyinfra.api.state import BaseStateCallback

    started: dict[tuple[str, str], float] = {}
    intervals: dict[str, list[list[float]]] = {}

    class Recorder(BaseStateCallback):
        def operation_host_start(self, _state, host, op_hash):
            if op_hash in _state.ops[host]:  # pyinfra calls this for hosts the operation skips too
                started[(host.name, op_hash)] = time.time()

        def _end(self, _state, host, op_hash, *_):
            start = started.pop((host.name, op_hash), None)
            if start is not None:
                intervals.setdefault(host.name, []).append([start, time.time()])

        operation_host_success = operation_host_error = _end

    state.add_callback_handler(Recorder())
    atexit.register(lambda: Path(out).write_text(json.dumps(intervals)))


def read(path: Path) -> dict[str, list[list[float]]]:
    """The intervals pyinfra wrote ({} when it wrote none: it stopped before running an operation)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def peak_at_once(intervals: dict[str, list[list[float]]]) -> int:
    """The most hosts that were running an operation at the same instant (0 without operations).
    An interval ending exactly when another starts does not overlap it."""
    events = sorted((t, kind) for spans in intervals.values() for start, end in spans
                    for t, kind in ((start, 1), (end, -1)))  # at equal times the end (-1) sorts first
    peak = running = 0
    for _, kind in events:
        running += kind
        peak = max(peak, running)
    return peak


def span(spans: list[list[float]]) -> tuple[float, float] | None:
    """A host's first operation start and last operation end (None if it ran none)."""
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None
