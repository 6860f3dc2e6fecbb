"""The control catalog (catalog/controls.toml): what each control id means and where it comes from.

One data file; this module loads and checks it, adds the references an auditor looks for
(dev-sec id, CIS Debian 12 section, the issue it serves, the enforcing role) and renders it
for `hardkit controls` and for the reports. Expected values stay in roles/*.py, shared by the
roles and the checks; the catalog only describes.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

CATALOG_FILE = Path(__file__).resolve().parent.parent / "catalog" / "controls.toml"
#: Tiers of the lab a control can be shown on by default; ["vm"] when it needs a kernel of its own.
DEFAULT_TIERS = ("nspawn", "vm")
TIERS = {"nspawn", "vm"}
#: dev-sec baselines whose control ids hardkit reuses as its own.
DEVSEC_PROFILES = {"sshd": "ssh-baseline", "os": "linux-baseline", "sysctl": "linux-baseline",
                   "package": "linux-baseline"}
CIS_BENCHMARK = "CIS Debian Linux 12 Benchmark v1.1.0"
_CIS_SECTION = re.compile(r"^\d+(\.\d+)+$")


class CatalogError(Exception):
    """The catalog file is wrong: every problem, one per line."""


@dataclass(frozen=True)
class Control:
    id: str
    area: str
    title: str
    rationale: str
    role: str
    requirement: str
    tiers: tuple[str, ...] = DEFAULT_TIERS
    devsec: str | None = None
    cis: str | None = None
    references: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tiers"] = list(self.tiers)
        return d


def devsec_reference(control_id: str) -> str | None:
    """'ssh-baseline sshd-06' for a dev-sec style id, None for hardkit's own (hk-*)."""
    prefix = control_id.split("-", 1)[0]
    return f"dev-sec {DEVSEC_PROFILES[prefix]} {control_id}" if prefix in DEVSEC_PROFILES else None


def parse(text: str, source: str = "catalog") -> dict[str, Control]:
    """Controls by id; raises CatalogError listing every problem (a repeated id is one: TOML refuses it)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{source}: {e}") from None
    areas, entries, cis = data.get("area", {}), data.get("control", {}), data.get("cis", {})
    problems = [f"{source}: unknown top-level key {k!r}" for k in data if k not in ("area", "control", "cis")]
    for name, a in areas.items():
        problems += [f"{source}: area {name} lacks {k}" for k in ("title", "role", "requirement", "rationale")
                     if not a.get(k)]
    out = {}
    for cid, e in entries.items():
        area = areas.get(e.get("area"))
        if area is None:
            problems.append(f"{source}: control {cid}: unknown area {e.get('area')!r}")
            continue
        tiers = tuple(e.get("tiers", DEFAULT_TIERS))
        if not tiers or set(tiers) - TIERS:
            problems.append(f"{source}: control {cid}: tiers must be among {sorted(TIERS)}, not {list(tiers)}")
        if not e.get("title"):
            problems.append(f"{source}: control {cid}: no title")
        extra = set(e) - {"area", "title", "rationale", "tiers"}
        if extra:
            problems.append(f"{source}: control {cid}: unknown keys {sorted(extra)}")
        section = cis.get(cid)
        devsec = devsec_reference(cid)
        refs = [r for r in (devsec, section and f"{CIS_BENCHMARK} {section}", area["requirement"]) if r]
        out[cid] = Control(cid, e.get("area"), e.get("title", ""), e.get("rationale") or area.get("rationale", ""),
                           area.get("role", ""), area.get("requirement", ""), tiers, devsec, section, refs)
    for cid, section in cis.items():
        if cid not in entries:
            problems.append(f"{source}: cis maps {cid}, which is not in the catalog")
        if not isinstance(section, str) or not _CIS_SECTION.match(section):
            problems.append(f"{source}: cis {cid} = {section!r} is not a section number like '5.1.20'")
    if problems:
        raise CatalogError("\n".join(problems))
    return out


@lru_cache(maxsize=1)
def load() -> dict[str, Control]:
    return parse(CATALOG_FILE.read_text(), str(CATALOG_FILE.name))


def to_json(controls: dict[str, Control]) -> str:
    return json.dumps({"catalog_version": 1, "cis_benchmark": CIS_BENCHMARK,
                       "controls": [c.as_dict() for c in controls.values()]}, indent=2) + "\n"


def to_markdown(controls: dict[str, Control]) -> str:
    lines = ["# hardkit control catalog", "",
             f"{len(controls)} controls. CIS sections refer to the {CIS_BENCHMARK} (hardkit's mapping; "
             "section numbers only). Tiers: where the lab can show a control (vm: needs a kernel of its own).", "",
             "| id | area | title | dev-sec | CIS | requirement | role | tiers |", "|---|---|---|---|---|---|---|---|"]
    for c in controls.values():
        cells = [c.id, c.area, c.title, c.devsec or "", c.cis or "", c.requirement, c.role, ", ".join(c.tiers)]
        lines.append("| " + " | ".join(s.replace("|", "\\|") for s in cells) + " |")
    return "\n".join(lines) + "\n"
