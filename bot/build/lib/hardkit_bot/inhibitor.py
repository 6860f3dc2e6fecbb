"""Reboot inhibitor file: tells the OS-updates role not to reboot while we hold exposure.

Contract: while the bot has open positions or live orders, the file
`$HARDKIT_REBOOT_INHIBIT_DIR/hardkit-bot` (default dir /run/hardkit/reboot-inhibitors)
exists and holds one JSON line
    {"holder":"hardkit-bot","reason":"...","since":"ISO8601","pid":N}
and it is removed once flat. Writes are atomic (temp file + rename) so a reader
never sees half a line; `since` keeps the start of the current exposure.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_DIR = "/run/hardkit/reboot-inhibitors"
log = logging.getLogger(__name__)


class RebootInhibitor:
    def __init__(self, directory: str | None = None):
        self.dir = Path(directory or os.environ.get("HARDKIT_REBOOT_INHIBIT_DIR") or DEFAULT_DIR)
        self.path = self.dir / "hardkit-bot"
        self._reason: str | None = None
        self._since: str | None = None

    def update(self, exposed: bool, reason: str) -> None:
        try:
            if exposed:
                if self._since is None:
                    self._since = self._existing_since() or datetime.now(timezone.utc).isoformat(timespec="seconds")
                if reason != self._reason or not self.path.exists():
                    self.dir.mkdir(parents=True, exist_ok=True)
                    tmp = self.path.with_name(".hardkit-bot.tmp")
                    tmp.write_text(json.dumps({"holder": "hardkit-bot", "reason": reason, "since": self._since,
                                               "pid": os.getpid()}) + "\n")
                    os.replace(tmp, self.path)
                    self._reason = reason
            else:
                self._reason = self._since = None
                self.path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("reboot inhibitor %s: %s", self.path, e)

    def _existing_since(self) -> str | None:
        try:
            return json.loads(self.path.read_text()).get("since")
        except (OSError, ValueError):
            return None
