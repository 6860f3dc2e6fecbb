"""The control plane: a local Unix socket, guarded by filesystem permissions.

Served by its own threads, independent of the engine loop: `halt` and `flatten`
work while the strategy is wedged, because they only need the ledger and the
exchange, never the loop. The socket is created with a restrictive umask (no
window with looser permissions) and then set to 0600 or 0660; the caller's uid
(SO_PEERCRED) is written to the audit log with every state-changing command.

Protocol: one JSON object per line each way, e.g. {"cmd": "halt", "reason": "..."};
`reset` takes `note` and optionally `new_day` (true: re-anchor the daily loss now).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)
COMMANDS = ("status", "halt", "flatten", "reset", "metrics", "ping")


class ControlServer:
    def __init__(self, path: str | Path, engine, mode: int = 0o660):
        self.path, self.engine, self.mode = str(path), engine, mode
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise RuntimeError(f"{p} exists and is not a socket; refusing to replace it")
            if _alive(self.path):
                raise RuntimeError(f"another bot is serving {p}")
            p.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        s.listen(8)
        s.settimeout(0.5)
        self._sock = s
        threading.Thread(target=self._serve, name="control", daemon=True).start()
        log.info("control socket %s (mode %o)", self.path, self.mode)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), name="control-conn", daemon=True).start()

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
            with e.store.tx():
                e.store.audit("control", {"cmd": cmd, "uid": uid, "args": {k: v for k, v in req.items() if k != "cmd"}})
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


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(path: str | Path, cmd: str, timeout: float = 120, **args) -> dict:
    """Client side: send one command and return the decoded answer (`timeout`: the socket's)."""
    return send(path, {"cmd": cmd, **args}, timeout)


def send(path: str | Path, req: dict, timeout: float = 120) -> dict:
    """Client side, any request object (e.g. flatten's own `timeout` field)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall((json.dumps(req) + "\n").encode())
        return json.loads(_readline(s))
    finally:
        s.close()
