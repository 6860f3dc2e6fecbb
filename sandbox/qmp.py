"""A minimal client for QEMU's machine protocol (QMP) on a unix socket.

The vm tier uses it to watch a snapshot restore, add the SSH port forward (`hostfwd_add`,
an HMP command reached through `human-monitor-command`) and save the golden snapshot.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from sandbox.errors import LabError


class QMP:
    def __init__(self, path: Path, timeout: float = 30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    @classmethod
    def connect(cls, path: Path, timeout: float, alive=lambda: True) -> QMP:
        """Retry until QEMU listens on `path` (it creates the socket during start-up)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return cls(path)
            except OSError:
                if time.monotonic() > deadline or not alive():
                    raise LabError(f"QEMU's monitor {path} did not answer") from None
                time.sleep(0.05)

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            if not line:
                raise LabError(f"QEMU closed its monitor {self.path}")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command: str, **arguments) -> object:
        req = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise LabError(f"QEMU refused {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command; its output is its error message, if any."""
        return str(self.execute("human-monitor-command", **{"command-line": command_line}) or "")

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
