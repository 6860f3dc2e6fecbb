"""`hardkit-bot dashboard-proxy`: bridge stdin/stdout to the dashboard's Unix socket.

What the controller runs over an SSH exec channel (sshd's forwarding stays off): one
proxy per browser connection, bytes copied both ways unchanged. Ends when the dashboard
closes the connection; stdin's end is passed on as a half-close so the last request
is still answered.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

#: Where the unit's RuntimeDirectory= puts the sockets: roles/bot_paths.RUNTIME_DIR and
#: DASHBOARD_SOCKET (the bot cannot import the toolkit; tests/unit/bot/test_bot_dashboard.py pins them).
DEFAULT_RUNTIME_DIR = "/run/hardkit-bot"
SOCKET_NAME = "dashboard.sock"
_CHUNK = 65536


def bridge(path: str | Path, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Connect to `path` and copy stdin to it and it to stdout until the socket's side ends."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))

    def upstream() -> None:
        try:
            while data := os.read(stdin_fd, _CHUNK):
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, name="proxy-stdin", daemon=True).start()
    try:
        while data := s.recv(_CHUNK):
            _write_all(stdout_fd, data)
    finally:
        s.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(runtime_dir: str | None) -> int:
    path = Path(runtime_dir or DEFAULT_RUNTIME_DIR) / SOCKET_NAME
    try:
        bridge(path)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"hardkit-bot: dashboard not reachable at {path} (bot not running, or [dashboard] enabled = false)",
              file=sys.stderr)
        return 3
    except PermissionError:
        print(f"hardkit-bot: no permission to open {path} (join the socket's group)", file=sys.stderr)
        return 3
    except BrokenPipeError:
        pass   # the reader of our stdout went away: nothing left to deliver
    except OSError as e:   # not a directory, path too long for a socket, ...
        print(f"hardkit-bot: cannot open {path}: {e.strerror or e}", file=sys.stderr)
        return 3
    return 0
