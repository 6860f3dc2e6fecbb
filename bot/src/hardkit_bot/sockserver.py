"""A local Unix-socket server guarded by filesystem permissions, one thread per connection.

Shared by the control socket and the dashboard, so both get the same treatment: the
socket is bound under a restrictive umask (no window with looser permissions), then set
to its configured mode (0600 or 0660, group = the runtime dir's); a stale socket file
left by a dead bot is replaced, a live one or a non-socket file is never touched.
Subclasses implement `_handle(conn)`.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class UnixSocketServer:
    def __init__(self, path: str | Path, mode: int = 0o660, name: str = "socket"):
        self.path, self.mode, self.name = str(path), mode, name
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
        threading.Thread(target=self._serve, name=self.name, daemon=True).start()
        log.info("%s socket %s (mode %o)", self.name, self.path, self.mode)

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
            threading.Thread(target=self._handle, args=(conn,), name=f"{self.name}-conn", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


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
