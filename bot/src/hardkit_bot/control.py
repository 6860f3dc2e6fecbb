"""The control plane: a local Unix socket, guarded by filesystem permissions.

Served by its own threads (sockserver.UnixSocketServer, shared with the dashboard),
independent of the engine loop: `halt` and `flatten` work while the strategy is
wedged, because they only need the ledger and the exchange, never the loop. The socket is created with a restrictive umask (no
window with looser permissions) and then set to 0600 or 0660; the caller's uid
(SO_PEERCRED) is written to the audit log with every state-changing command.

Protocol: one JSON object per line each way, e.g. {"cmd": "halt", "reason": "..."};
`reset` takes `note` and optionally `new_day` (true: re-anchor the daily loss now).
`deadline` (CLOCK_MONOTONIC seconds, set by `send` from the client's timeout): a `reset` or
`flatten` read after it is refused, not executed — the client has already told its operator it
got no answer (e.g. the bot was stopped, SIGSTOP, and woke up later). A late `halt` is still
executed: it only ever lowers risk, and the operator asked for it.
"""
from __future__ import annotations

import json
import logging
import socket
import struct
import time
from pathlib import Path

from .sockserver import UnixSocketServer

log = logging.getLogger(__name__)
COMMANDS = ("status", "halt", "flatten", "reset", "metrics", "ping")
#: Commands refused once their client's deadline has passed (see the module docstring).
EXPIRING = ("flatten", "reset")


def _now() -> float:
    """The clock of `deadline`: monotonic and the same for every process on the host."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _expired(req: dict) -> bool:
    deadline = req.get("deadline")
    return isinstance(deadline, (int, float)) and _now() > deadline


class ControlServer(UnixSocketServer):
    def __init__(self, path: str | Path, engine, mode: int = 0o660):
        super().__init__(path, mode, "control")
        self.engine = engine

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(120)
            try:
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                req = json.loads(_readline(conn))
                resp = self.dispatch(req, uid)
            except Exception as e:  # report, never kill the control thread
                log.exception("control request failed")
                resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            try:
                conn.sendall((json.dumps(resp, default=str) + "\n").encode())
            except OSError:
                pass

    def dispatch(self, req: dict, uid: int) -> dict:
        cmd = req.get("cmd")
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r}; one of {', '.join(COMMANDS)}"}
        e = self.engine
        if cmd in ("halt", "flatten", "reset"):
            expired = cmd in EXPIRING and _expired(req)
            with e.store.tx():
                e.store.audit("control", {"cmd": cmd, "uid": uid, "args": {k: v for k, v in req.items() if k != "cmd"},
                                          **({"refused": "arrived after its deadline"} if expired else {})})
            if expired:
                log.warning("control: %s from uid %s arrived after its client stopped waiting: not executed", cmd, uid)
                return {"ok": False, "error": f"{cmd} arrived after its client stopped waiting: not executed"}
        if cmd == "ping":
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, **e.status()}
        if cmd == "metrics":
            from .metrics import render
            return {"ok": True, "text": render(e.status())}
        if cmd == "halt":
            return e.halt(str(req.get("reason", "no reason given"))[:200])
        if cmd == "flatten":
            return e.flatten(float(req.get("timeout", 30)))
        return e.reset(str(req.get("note", "operator"))[:200], bool(req.get("new_day", False)))


def _readline(conn: socket.socket, limit: int = 65536) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError("request too long")
    return buf


def request(path: str | Path, cmd: str, timeout: float = 120, **args) -> dict:
    """Client side: send one command and return the decoded answer (`timeout`: the socket's)."""
    return send(path, {"cmd": cmd, **args}, timeout)


def send(path: str | Path, req: dict, timeout: float = 120) -> dict:
    """Client side, any request object (e.g. flatten's own `timeout` field); a `deadline` is added
    from `timeout`, so the bot never executes a reset or flatten this client gave up on."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall((json.dumps({"deadline": _now() + timeout, **req}) + "\n").encode())
        return json.loads(_readline(s))
    finally:
        s.close()
