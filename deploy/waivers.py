"""Justified waivers: controls deliberately not met, each with reason, owner and expiry date.

tests/compliance/waivers.toml is the list (`hardkit verify --waivers FILE` or $HARDKIT_WAIVERS
names another). A waived check is reported as WAIVED with its reason instead of running, so an
auditor sees every exception and why. A waiver past its expiry date no longer waives: the check
fails and says the waiver expired, so exceptions get looked at again. `hardkit verify` validates
the file before any host is contacted: a missing field, a bad date or a control id the catalog
does not know is a usage error (exit 2), every problem listed at once.
"""

from __future__ import annotations

import datetime
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

WAIVERS_FILE = Path(__file__).resolve().parent.parent / "tests" / "compliance" / "waivers.toml"
#: Environment variable naming another waiver file (set by `hardkit verify --waivers`).
WAIVERS_ENV = "HARDKIT_WAIVERS"
FIELDS = {"reason", "owner", "expires", "hosts"}


class WaiverError(Exception):
    """The waiver file is wrong: every problem, one per line."""


@dataclass(frozen=True)
class Waiver:
    control: str
    reason: str
    owner: str
    expires: datetime.date
    hosts: tuple[str, ...] = field(default=())  # empty: every host

    def applies_to(self, host: str) -> bool:
        return not self.hosts or host in self.hosts

    def expired(self, today: datetime.date | None = None) -> bool:
        """Expired the day after its expiry date (the date itself is still covered)."""
        return (today or datetime.date.today()) > self.expires


def waivers_path() -> Path:
    return Path(os.environ.get(WAIVERS_ENV) or WAIVERS_FILE)


def parse(text: str, known_controls=None, source: str = "waivers") -> dict[str, Waiver]:
    """Waivers by control id; raises WaiverError listing every problem. `known_controls`: the catalog's ids."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WaiverError(f"{source}: {e}") from None
    problems = [f"{source}: unknown top-level key {k!r} (waivers go under [waiver.\"ID\"])"
                for k in data if k != "waiver"]
    out = {}
    for control, entry in data.get("waiver", {}).items():
        where = f"{source}: waiver {control}"
        if known_controls is not None and control not in known_controls:
            problems.append(f"{where}: no control has this id (see `hardkit controls`)")
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a table with reason, owner, expires")
            continue
        problems += [f"{where}: unknown key {k!r}" for k in sorted(set(entry) - FIELDS)]
        problems += [f"{where}: no {k}" for k in ("reason", "owner") if not str(entry.get(k, "")).strip()]
        expires = entry.get("expires")
        if isinstance(expires, datetime.datetime) or not isinstance(expires, datetime.date):
            problems.append(f"{where}: expires must be a date like 2027-06-30, not {expires!r}")
        hosts = entry.get("hosts", [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            problems.append(f"{where}: hosts must be a list of host names")
        out[control] = Waiver(control, str(entry.get("reason", "")), str(entry.get("owner", "")), expires,
                              tuple(hosts) if isinstance(hosts, list) else ())
    if problems:
        raise WaiverError("\n".join(problems))
    return out


def load_waivers(path: Path | None = None, known_controls=None) -> dict[str, Waiver]:
    path = path or waivers_path()
    if not path.exists():
        if path != WAIVERS_FILE:
            raise WaiverError(f"no such waiver file: {path}")
        return {}
    return parse(path.read_text(), known_controls, str(path))
