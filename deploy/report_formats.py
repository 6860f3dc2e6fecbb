"""The compliance report as one versioned document, and the formats written from it.

Every format (JSON, Markdown, JUnit XML, HTML) is rendered from the same document, so their
counts cannot disagree. The JSON is the document itself; its schema (SCHEMA, SCHEMA_VERSION)
is described in README.md ("The compliance report") and changes only with a new version:

    schema, schema_version, generated (UTC, ISO 8601), inventory,
    summary {STATUS: count},                      over every (host, control) row
    hosts [{name, reachable, error, summary}],    per host (error: why it was not checked; a
                                                  reachable host with an error wrote no results)
    controls [{host, control, title, status, area, role, requirement, rationale, references,
               evidence, waiver, details}]        one row per (host, control)

STATUS is one of PASS, FAIL, ERROR, NOT VERIFIED, SKIP, WAIVED. `evidence` is what the failed
check found against what it expected; `waiver` is the waiver's text for WAIVED rows.
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

SCHEMA = "hardkit-compliance-report"
SCHEMA_VERSION = 1
#: Worst first: a control with several checks reports its worst outcome.
STATUSES = ("FAIL", "ERROR", "NOT VERIFIED", "SKIP", "WAIVED", "PASS")
#: What fails a verify (exit 1): everything else passes, is waived, does not apply or could not be checked.
FAILING = ("FAIL", "ERROR")
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "report"


def count(rows: list[dict]) -> dict[str, int]:
    out = {s: 0 for s in STATUSES}
    for r in rows:
        out[r["status"]] += 1
    return out


def document(rows: list[dict], catalog: dict, inventory: str, generated: str,
             unreachable: dict[str, str] | None = None) -> dict:
    """The report: rows enriched from the catalog (area, references, rationale), counted per host and overall."""
    unreachable = unreachable or {}
    controls = []
    for r in sorted(rows, key=lambda r: (r["host"], r["control"])):
        c = catalog.get(r["control"])
        details = list(r["details"])
        controls.append({
            "host": r["host"], "control": r["control"], "title": c.title if c else r["title"],
            "status": r["status"], "area": c.area if c else "uncatalogued", "role": c.role if c else None,
            "requirement": c.requirement if c else None, "rationale": c.rationale if c else None,
            "references": list(c.references) if c else [],
            "evidence": "; ".join(details) if r["status"] in ("FAIL", "ERROR") else "",
            "waiver": details[0].split(": ", 1)[-1] if r["status"] == "WAIVED" and details else None,
            "details": details,
        })
    hosts = sorted({r["host"] for r in controls} | set(unreachable))
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "generated": generated, "inventory": inventory,
        "summary": count(controls),
        "hosts": [{"name": h, "reachable": h not in unreachable, "error": unreachable.get(h),
                   "summary": count([r for r in controls if r["host"] == h])} for h in hosts],
        "controls": controls,
    }


def merge(docs: list[dict], inventory: str, generated: str, unchecked: dict[str, str] | None = None) -> dict:
    """One document from the per-host runs of `hardkit verify` (each a whole document of its own),
    plus the hosts whose run wrote none (`unchecked`: host -> why), listed reachable with that error.
    Counts are taken again from the merged rows, so every format still agrees with the JSON."""
    unchecked = unchecked or {}
    controls = sorted((r for d in docs for r in d["controls"]), key=lambda r: (r["host"], r["control"]))
    hosts = {h["name"]: {"name": h["name"], "reachable": h["reachable"], "error": h["error"]}
             for d in docs for h in d["hosts"]}
    for name, why in unchecked.items():
        hosts.setdefault(name, {"name": name, "reachable": True, "error": why})
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "generated": generated, "inventory": inventory,
        "summary": count(controls),
        "hosts": [{**hosts[h], "summary": count([r for r in controls if r["host"] == h])} for h in sorted(hosts)],
        "controls": controls,
    }


def host_state(h: dict) -> str:
    """The report's `reachable` cell: yes, NO (why), or reachable but not checked (why)."""
    if not h["reachable"]:
        return "NO: " + (h["error"] or "")
    return "yes" if not h["error"] else "yes, NOT CHECKED: " + h["error"]


def terminal_lines(doc: dict) -> list[str]:
    """The terminal's summary of a report: each host's controls, then the counts per host and overall."""
    lines = []
    width = max((len(r["title"]) for r in doc["controls"]), default=10)
    for host in doc["hosts"]:
        lines.append(f"{host['name']}:" + ("" if host["reachable"] else f" UNREACHABLE ({host['error']})")
                     + (f" NOT CHECKED ({host['error']})" if host["reachable"] and host["error"] else ""))
        for r in (r for r in doc["controls"] if r["host"] == host["name"]):
            # Why it is not a pass, shortened: a failure's evidence, a skip's or waiver's reason.
            reason = r["evidence"] or (r["details"][0].split(": ", 1)[-1] if r["details"] else "")
            note = f"  ({reason[:160]}{'...' if len(reason) > 160 else ''})" if r["status"] != "PASS" else ""
            lines.append(f"  {r['status']:<12} {r['control']:<14} {r['title']:<{width}}{note}")
    for host in doc["hosts"]:
        lines.append(f"{host['name']}: " + (summary_line(host["summary"]) or "no controls"))
    lines.append("controls: " + summary_line(doc["summary"]))
    return lines


def summary_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s.lower()}" for s in STATUSES if counts.get(s))


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


def to_markdown(doc: dict) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")[:400]

    lines = ["# hardkit compliance report", "", f"Inventory {doc['inventory']}, generated {doc['generated']}.", "",
             "| host | reachable | " + " | ".join(s.lower() for s in STATUSES) + " |",
             "|---|---|" + "---|" * len(STATUSES)]
    for h in doc["hosts"]:
        lines.append(f"| {h['name']} | {cell(host_state(h))} | "
                     + " | ".join(str(h["summary"][s]) for s in STATUSES) + " |")
    lines.append("| **all** | | " + " | ".join(str(doc["summary"][s]) for s in STATUSES) + " |")
    lines += ["", "| host | control | check | result | references | evidence / reason |", "|---|---|---|---|---|---|"]
    for r in doc["controls"]:
        lines.append(f"| {r['host']} | {r['control']} | {cell(r['title'])} | {r['status']} | "
                     f"{cell('; '.join(r['references']))} | {cell('; '.join(r['details']))} |")
    return "\n".join(lines) + "\n"


def to_junit(doc: dict) -> str:
    """One testsuite per host, one testcase per (host, control)."""
    root = ET.Element("testsuites", name="hardkit compliance", tests=str(len(doc["controls"])))
    for h in doc["hosts"]:
        rows = [r for r in doc["controls"] if r["host"] == h["name"]]
        s = h["summary"]
        suite = ET.SubElement(root, "testsuite", name=h["name"], tests=str(len(rows)), failures=str(s["FAIL"]),
                              errors=str(s["ERROR"]),
                              skipped=str(s["SKIP"] + s["WAIVED"] + s["NOT VERIFIED"]))
        if h["error"]:
            ET.SubElement(ET.SubElement(suite, "testcase", classname=f"hardkit.{h['name']}", name="reachable"),
                          "error", message=f"host {'unreachable' if not h['reachable'] else 'not checked'}: "
                                           f"{h['error']}")
        for r in rows:
            case = ET.SubElement(suite, "testcase", classname=f"hardkit.{h['name']}",
                                 name=f"{r['control']}: {r['title']}")
            text = "\n".join(r["details"] + ["references: " + "; ".join(r["references"])])
            if r["status"] == "FAIL":
                ET.SubElement(case, "failure", message=r["evidence"][:500]).text = text
            elif r["status"] == "ERROR":
                ET.SubElement(case, "error", message=r["evidence"][:500]).text = text
            elif r["status"] in ("SKIP", "WAIVED", "NOT VERIFIED"):
                ET.SubElement(case, "skipped", message=f"{r['status']}: " + "; ".join(r["details"])[:500])
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def to_html(doc: dict) -> str:
    """One self-contained page (inline style and script, no fetches) with filters by status, area and host."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]),
                      keep_trailing_newline=True)
    return env.get_template("compliance.html.j2").render(
        doc=doc, statuses=STATUSES, host_state=host_state, areas=sorted({r["area"] for r in doc["controls"]}), escape=html.escape)


WRITERS = {"compliance.json": to_json, "compliance.md": to_markdown, "compliance.xml": to_junit,
           "compliance.html": to_html}


def write_all(doc: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, render in WRITERS.items():
        path = folder / name
        path.write_text(render(doc))
        paths.append(path)
    return paths
