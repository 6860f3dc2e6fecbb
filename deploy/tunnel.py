"""A loopback port on the controller whose connections are piped to fresh byte streams.

sshd on the VPS has every kind of forwarding off, so the bot's dashboard is not reached
with `ssh -L`: each connection accepted on 127.0.0.1:PORT gets its own stream from an
`opener` (the lead's: a paramiko exec channel running `hardkit-bot dashboard-proxy`;
tests: `ProcessStream` of that command run locally), and bytes are copied both ways
until both sides have finished. A stream is anything with paramiko Channel's four
methods: recv(n) -> bytes (b"" at the end), sendall(data), shutdown_write(), close().

    with Tunnel(opener) as t:        # listens on 127.0.0.1, an ephemeral port unless given
        print(t.url)
        t.wait()                     # until Ctrl-C (KeyboardInterrupt) or stop()
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)
_CHUNK = 65536
#: Seconds between two looks at the stop flag in wait() (how long a stop() from another thread takes to end it).
WAIT_POLL_S = 0.2


class ByteStream(Protocol):
    def recv(self, n: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class ProcessStream:
    """A local command's stdin/stdout as a ByteStream (its stderr goes to ours)."""

    def __init__(self, argv: Sequence[str], env: dict | None = None):
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env)

    def recv(self, n: int) -> bytes:
        return os.read(self.proc.stdout.fileno(), n)

    def sendall(self, data: bytes) -> None:
        self.proc.stdin.write(data)   # unbuffered FileIO on a blocking pipe: writes it all or raises

    def shutdown_write(self) -> None:
        self.proc.stdin.close()

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Tunnel:
    """Listen on host:port (loopback only) and pipe each connection to opener()'s stream."""

    def __init__(self, opener: Callable[[], ByteStream], port: int = 0, host: str = "127.0.0.1"):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the tunnel listens on loopback only, not {host!r}")
        self.opener, self.host, self.port = opener, host, port
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> Tunnel:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(16)
        self._listener, self.port = s, s.getsockname()[1]
        threading.Thread(target=self._accept, name="tunnel", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        self._stopped.set()
        if self._listener is not None:
            _shut(self._listener)
            self._listener.close()
        with self._lock:
            for c in list(self._open):
                _shut(c)

    def wait(self) -> None:
        """Block until stop() or Ctrl-C; Ctrl-C stops the tunnel and returns.

        Polls with sleep, not Event.wait: a Ctrl-C is raised wherever the main thread is, and inside
        Event.wait that is amid the event's own lock handling, which stop() then needs; `is_set()` and
        `sleep()` hold no lock."""
        try:
            while not self._stopped.is_set():
                time.sleep(WAIT_POLL_S)
        except KeyboardInterrupt:
            self.stop()

    def __enter__(self) -> Tunnel:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), name="tunnel-conn", daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)
        try:
            try:
                stream = self.opener()
            except Exception as e:  # the remote side could not be reached: this connection fails, the tunnel stays
                log.warning("tunnel: cannot open the remote stream: %s", e)
                return
            try:
                up = threading.Thread(target=_copy_up, args=(conn, stream), name="tunnel-up", daemon=True)
                up.start()
                _copy_down(stream, conn)
                up.join()
            finally:
                stream.close()
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()


def _copy_up(conn: socket.socket, stream: ByteStream) -> None:
    """Browser to remote; the browser's half-close is passed on."""
    try:
        while data := conn.recv(_CHUNK):
            stream.sendall(data)
    except OSError:
        pass
    try:
        stream.shutdown_write()
    except OSError:
        pass


def _copy_down(stream: ByteStream, conn: socket.socket) -> None:
    """Remote to browser; when the remote ends, the browser's side is closed both ways."""
    try:
        while data := stream.recv(_CHUNK):
            conn.sendall(data)
    except OSError:
        pass
    _shut(conn)


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
