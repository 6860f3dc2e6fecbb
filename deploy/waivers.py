"""Justified waivers: controls deliberately not met, each with reason, owner and expiry date.

tests/compliance/waivers.toml is the list (`hardkit verify --waivers FILE` or $HARDKIT_WAIVERS
names another). A waived check is reported as WAIVED with its reason instead of running, so an
auditor sees every exception and why. A waiver past its expiry date no longer waives: the check
fails and says the waiver expired, so exceptions get looked at again. `hardkit verify` validates
the file before any host is contacted: a missing field, a bad date or a control id the catalog
does not know is a usage error (exit 2), every problem listed at once.

Lynis findings are waived one by one, under `[lynis."TEST-ID"]` with the same fields: Lynis' index
is Lynis' own sum (a waiver cannot and must not change it), but ext-lynis-02 holds every warning and
suggestion Lynis makes to "fixed, or declined with a reason that is still current", so a new finding
after an upgrade or a change shows up, and an auditor reads why each remaining one is not followed.
"""

from __future__ import annotations

import datetime
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

WAIVERS_FILE = Path(__file__).resolve().parent.parent / "tests" / "compliance" / "waivers.toml"
#: Environment variable naming another waiver file (set by `hardkit verify --waivers`).
WAIVERS_ENV = "HARDKIT_WAIVERS"
FIELDS = {"reason", "owner", "expires", "hosts"}
#: Top-level tables: waivers of controls, and of single Lynis findings (by Lynis test id).
KINDS = ("waiver", "lynis")
#: A Lynis test id, as its report names it (KRNL-5830, FILE-6310, ...), or one setting a test names
#: (SSH-7408:MaxSessions) to decline that one only.
LYNIS_ID = re.compile(r"^([A-Z]{3,4}-\d{4}|LYNIS)(:[A-Za-z0-9_]+)?$")


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


def _entries(table, kind: str, source: str, known) -> tuple[dict[str, Waiver], list[str]]:
    """The waivers of one top-level table and the problems found in it. `known(id)`: None if the id is
    acceptable, else what is wrong with it."""
    out, problems = {}, []
    if not isinstance(table, dict):
        return out, [f"{source}: [{kind}] must hold tables like [{kind}.\"ID\"]"]
    for control, entry in table.items():
        where = f"{source}: {kind} {control}"
        wrong_id = known(control)
        if wrong_id:
            problems.append(f"{where}: {wrong_id}")
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
    return out, problems


def parse_all(text: str, known_controls=None, source: str = "waivers") -> dict[str, dict[str, Waiver]]:
    """{"waiver": control waivers by id, "lynis": Lynis finding waivers by test id}; raises WaiverError
    listing every problem of both. `known_controls`: the catalog's ids."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WaiverError(f"{source}: {e}") from None
    problems = [f"{source}: unknown top-level key {k!r} (waivers go under [waiver.\"ID\"], Lynis findings "
                f"under [lynis.\"TEST-ID\"])" for k in data if k not in KINDS]
    checks = {
        "waiver": lambda c: None if known_controls is None or c in known_controls
        else "no control has this id (see `hardkit controls`)",
        "lynis": lambda c: None if LYNIS_ID.match(c) else "not a Lynis test id (like KRNL-5830, or SSH-7408:MaxSessions)",
    }
    out = {}
    for kind in KINDS:
        out[kind], found = _entries(data.get(kind, {}), kind, source, checks[kind])
        problems += found
    if problems:
        raise WaiverError("\n".join(problems))
    return out


def parse(text: str, known_controls=None, source: str = "waivers") -> dict[str, Waiver]:
    """Control waivers by control id; raises WaiverError listing every problem. `known_controls`: the catalog's ids."""
    return parse_all(text, known_controls, source)["waiver"]


def _load(path: Path | None, known_controls) -> dict[str, dict[str, Waiver]]:
    path = path or waivers_path()
    if not path.exists():
        if path != WAIVERS_FILE:
            raise WaiverError(f"no such waiver file: {path}")
        return {kind: {} for kind in KINDS}
    return parse_all(path.read_text(), known_controls, str(path))


def load_waivers(path: Path | None = None, known_controls=None) -> dict[str, Waiver]:
    """Control waivers by control id (the whole file is validated, Lynis findings included)."""
    return _load(path, known_controls)["waiver"]


def load_lynis_waivers(path: Path | None = None) -> dict[str, Waiver]:
    """Waivers of single Lynis findings by Lynis test id (ext-lynis-02)."""
    return _load(path, None)["lynis"]
