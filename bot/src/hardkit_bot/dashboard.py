"""The read-only risk dashboard: HTTP/1.1 on a Unix socket beside the control socket.

Nothing listens on TCP: the operator reaches the socket through an SSH exec channel
running `hardkit-bot dashboard-proxy` (sshd forwarding stays off), and the controller's
deploy/tunnel.py turns that into a loopback port for a browser or Prometheus. Same socket
set-up (umask, mode, group) as the control socket; GET and HEAD only, nothing changes state.

    /             the page (dashboard_page.py), polls api/status
    /api/status   the bot's status (the control socket's `status`) plus the equity curve
    /metrics      Prometheus text exposition (metrics.render)

Requests must name a loopback Host (127.0.0.1, localhost, [::1], any port), so a web page
that rebinds its DNS name to the tunnel's port cannot read the bot's positions.
"""
from __future__ import annotations

import collections
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from . import dashboard_page
from .metrics import render as render_metrics
from .sockserver import UnixSocketServer

log = logging.getLogger(__name__)
_LOOPBACK_HOST = re.compile(r"^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])(:\d{1,5})?$", re.I)


class EquityRing:
    """The last `size` (time, equity) points, oldest dropped first; survives nothing (memory only)."""

    def __init__(self, size: int):
        self._points: collections.deque[tuple[float, float]] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ts: float, equity: float) -> None:
        with self._lock:
            self._points.append((ts, equity))

    def points(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._points)


class DashboardServer(UnixSocketServer):
    """Serves the status callable's view; a sampler thread feeds the equity curve every `sample_s`."""

    def __init__(self, path: str | Path, status: Callable[[], dict], mode: int = 0o660, *,
                 sample_s: float = 5.0, points: int = 720, clock: Callable[[], float] = time.time):
        super().__init__(path, mode, "dashboard")
        self.status, self.sample_s, self.clock = status, sample_s, clock
        self.curve = EquityRing(points)

    def start(self) -> None:
        super().start()
        threading.Thread(target=self._sample, name="dashboard-sampler", daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                st = self.status()
                if st.get("steps", 1):   # before the first iteration the equity is not known yet
                    self.curve.add(self.clock(), float(st["equity"]))
            except Exception:  # the page shows the gap; the sampler must not die
                log.exception("dashboard equity sample failed")
            self._stop.wait(self.sample_s)

    def api_status(self) -> dict:
        return {**self.status(), "equity_curve": self.curve.points(),
                "served_at": datetime.now(timezone.utc).isoformat()}

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                _Handler(conn, ("dashboard", 0), self)
            except OSError:
                pass   # the client went away


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60   # an idle keep-alive connection is closed after this many seconds
    server: DashboardServer

    def version_string(self) -> str:
        return "hardkit-bot-dashboard"

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        if not _LOOPBACK_HOST.match(self.headers.get("Host", "")):
            return self._send(403, "text/plain; charset=utf-8", b"only loopback Host names are served\n", head)
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self._send(200, "text/html; charset=utf-8", dashboard_page.PAGE, head,
                              {"Content-Security-Policy": dashboard_page.csp()})
        if path not in ("/api/status", "/metrics"):
            return self._send(404, "text/plain; charset=utf-8", b"not found: / /api/status /metrics\n", head)
        try:
            st = self.server.api_status()
        except Exception as e:  # the engine's view failed: say so, keep serving
            log.exception("dashboard status failed")
            body = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
            return self._send(503, "application/json", body, head)
        if path == "/metrics":
            return self._send(200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(st).encode(), head)
        return self._send(200, "application/json", json.dumps(st, default=str).encode(), head)

    def _not_allowed(self) -> None:
        self.close_connection = True   # its body, if any, is never read
        self._send(405, "text/plain; charset=utf-8", b"read-only: GET and HEAD only\n", False, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _send(self, code: int, ctype: str, body: bytes, head: bool, extra: dict | None = None) -> None:
        self.send_response(code)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("dashboard: " + format, *args)
