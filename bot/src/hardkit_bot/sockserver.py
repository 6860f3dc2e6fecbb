"""A local Unix-socket server guarded by filesystem permissions, one thread per connection.

Shared by the control socket and the dashboard, so both get the same treatment: the
socket is bound under a restrictive umask (no window with looser permissions), then set
to its configured mode (0600 or 0660, group = the runtime dir's); a stale socket file
left by a dead bot is replaced, a live one or a non-socket file is never touched.
Subclasses implement `_handle(conn)`. `stop()` waits (up to DRAIN_SECONDS) for requests already
being handled, so a bot that shuts down finishes a command it took before it closes its ledger.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


#: Seconds `stop()` waits for the requests in progress (a halt takes milliseconds; a flatten that
#: still trades after that is cut off by the closing ledger and reports an error).
DRAIN_SECONDS = 5.0


class UnixSocketServer:
    def __init__(self, path: str | Path, mode: int = 0o660, name: str = "socket"):
        self.path, self.mode, self.name = str(path), mode, name
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()

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

    def stop(self, drain_s: float = DRAIN_SECONDS) -> None:
        """Accept nothing more, then wait up to `drain_s` for the requests in progress."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        deadline = time.monotonic() + drain_s
        with self._handlers_lock:
            running = list(self._handlers)
        for t in running:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("%s: a request still in progress at shutdown after %.0f s", self.name, drain_s)
                break

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            t = threading.Thread(target=self._tracked, args=(conn,), name=f"{self.name}-conn", daemon=True)
            with self._handlers_lock:   # started under the lock: stop() never sees an unstarted thread
                self._handlers.add(t)
                t.start()

    def _tracked(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        finally:
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())

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
