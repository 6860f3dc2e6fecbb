"""Justified waivers: controls we deliberately do not meet, each with its reason.

`waivers.toml` beside this file is the list. A waived check is reported as WAIVED with its
reason instead of running, so an auditor sees every exception and why.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

WAIVERS_FILE = Path(__file__).with_name("waivers.toml")


@dataclass(frozen=True)
class Waiver:
    control: str
    reason: str
    hosts: tuple[str, ...] = field(default=())  # empty: every host

    def applies_to(self, host: str) -> bool:
        return not self.hosts or host in self.hosts


@lru_cache(maxsize=1)
def load_waivers() -> dict[str, Waiver]:
    if not WAIVERS_FILE.exists():
        return {}
    data = tomllib.loads(WAIVERS_FILE.read_text())
    out = {}
    for control, entry in data.get("waiver", {}).items():
        out[control] = Waiver(control, entry["reason"], tuple(entry.get("hosts", ())))
    return out
