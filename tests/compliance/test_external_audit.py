"""External auditors in the same report (`hardkit audit`, or verify with --hardkit-auditors).

ssh-audit (from the controller, as any client sees the server) and `systemd-analyze security`
(on the host) judge hardkit from outside its own checks, against thresholds from the inventory
(roles/auditors_data.py). Marked `auditor`: a plain `hardkit verify` leaves them out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from roles import bot as bot_role
from deploy.waivers import load_lynis_waivers
from roles.auditors_data import SSH_AUDIT_MAX_WARNINGS, SSH_AUDIT_POLICY, UNIT_MAX_EXPOSURE, lynis_min_index
from roles.bot_paths import UNIT as BOT_UNIT
from roles.filesystem import MOUNT_UNIT
from roles.integrity_data import RKHUNTER_SCAN_UNIT
from ssh_audit.ssh2_kexdb import SSH2_KexDB

pytestmark = pytest.mark.auditor
SSH_AUDIT = str(Path(sys.executable).parent / "ssh-audit")
#: Units whose work is on the host as it is: the remounts must reach the host's mount namespace (one of
#: their own would undo them), and the rootkit scan must see the host's /tmp, /dev, network and kernel
#: modules (hiding them would blind it). The sandboxing options that hide those are out of reach for
#: them (ext-units-02, not -01).
HOST_VIEW_UNITS = {MOUNT_UNIT, RKHUNTER_SCAN_UNIT}


def _ssh_audit(target, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SSH_AUDIT, *args, "-p", str(target.login.port), target.data["ssh_hostname"]],
                          capture_output=True, text=True, timeout=120)


def warnings(report: dict) -> list[str]:
    """Every warning ssh-audit attaches to an algorithm the server offers, as 'kind algorithm: text'."""
    out = []
    for kind in ("kex", "key", "enc", "mac"):
        for alg in report.get(kind, []):
            out += [f"{kind} {alg['algorithm']}: {w}" for w in alg.get("notes", {}).get("warn", [])]
    return out


@pytest.mark.control("ext-ssh-audit-01")
def test_ssh_audit_policy_passes(target):
    """ssh-audit: the server passes the Hardened Debian 12 policy"""
    res = _ssh_audit(target, "-P", SSH_AUDIT_POLICY)
    failed = [line.strip() for line in res.stdout.splitlines() if "Failed" in line or "expected" in line.lower()]
    assert res.returncode == 0, f"policy '{SSH_AUDIT_POLICY}' not passed: " + " / ".join(failed)[:600]


def not_post_quantum(found: list[str]) -> list[str]:
    """The warnings that a key exchange lacks post-quantum protection (ext-ssh-audit-03's own concern)."""
    return [w for w in found if w.startswith("kex ") and w.endswith(SSH2_KexDB.WARN_NOT_PQ_SAFE)]


def _ssh_audit_warnings(target) -> list[str]:
    return warnings(json.loads(_ssh_audit(target, "-j").stdout))


@pytest.mark.control("ext-ssh-audit-02")
def test_ssh_audit_warnings_within_limit(target):
    """ssh-audit: no more warnings than the inventory allows (default 0), besides ext-ssh-audit-03's"""
    found = target.fact("ext:ssh-audit-warnings", _ssh_audit_warnings)
    other, allowed = [w for w in found if w not in not_post_quantum(found)], SSH_AUDIT_MAX_WARNINGS.value(target.data)
    assert len(other) <= allowed, f"{len(other)} warnings (allowed {allowed}): " + "; ".join(other)


@pytest.mark.control("ext-ssh-audit-03")
def test_ssh_audit_every_kex_post_quantum(target):
    """ssh-audit: every key exchange offered resists post-quantum attacks"""
    classical = not_post_quantum(target.fact("ext:ssh-audit-warnings", _ssh_audit_warnings))
    assert not classical, f"{len(classical)} key exchanges without post-quantum protection: " + "; ".join(classical)


def _exposures(target) -> dict[str, float]:
    units = target.check_output("systemctl list-unit-files --type=service --no-legend 'hardkit-*'").split()
    services = [u for u in units if u.endswith(".service") and "@" not in u]
    out = {}
    for unit in services:
        text = target.check_output(f"systemd-analyze security --no-pager {unit} 2>&1 | tail -n 3")
        m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", text)
        assert m, f"no exposure for {unit}: {text.strip()[-200:]}"
        out[unit] = float(m.group(1))
    return out


def _over_limit(target, units) -> str:
    """'unit found / allowed' for each of `units` above its limit (the inventory's; the bot's own)."""
    exposures = target.fact("ext:exposures", _exposures)
    limit = UNIT_MAX_EXPOSURE.value(target.data)
    allowed = {u: bot_role.MAX_EXPOSURE if u == BOT_UNIT else limit for u in exposures}
    return ", ".join(f"{u} {exposures[u]} / {allowed[u]}" for u in sorted(units) if exposures[u] > allowed[u])


@pytest.mark.control("ext-units-01")
def test_every_hardkit_unit_within_its_exposure_limit(target):
    """systemd-analyze security: every unit hardkit installs (but ext-units-02's) at or below its limit (2.0; the bot 1.5)"""
    exposures = target.fact("ext:exposures", _exposures)
    assert exposures, "no hardkit unit installed"
    over = _over_limit(target, set(exposures) - HOST_VIEW_UNITS)
    assert not over, "exposure above the limit (found / allowed): " + over


@pytest.mark.control("ext-units-02")
def test_host_mount_units_within_the_limit(target):
    """systemd-analyze security: the units that must see the host as it is (remounts, rootkit scan) at or below the limit (2.0)"""
    exposures = target.fact("ext:exposures", _exposures)
    over = _over_limit(target, HOST_VIEW_UNITS & set(exposures))
    assert not over, "exposure above the limit (found / allowed): " + over


#: Lynis runs with its own defaults (no custom profile: the score is not tuned, the host is).
LYNIS_RUN = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q lynis >/dev/null && "
             "lynis audit system --quick --no-colors --cronjob >/dev/null 2>&1; "
             "grep -E '^(hardening_index|warning\\[\\]|suggestion\\[\\])=' /var/log/lynis-report.dat")
LYNIS_REMOVE = "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q lynis >/dev/null; rm -f /var/log/lynis.log " \
               "/var/log/lynis-report.dat"


#: Lynis' details for a setting it would change ("MaxSessions (set 10 to 2)"): such findings are told
#: apart by the setting, so declining one (SSH-7408:MaxSessions) does not decline its neighbours.
SETTING_DETAIL = re.compile(r"^([A-Za-z0-9_]+) \(set ")


def lynis_findings(report: list[str]) -> tuple[int | None, dict[str, str]]:
    """(hardening index, {finding: 'warning|suggestion: text'}) from the lines of Lynis' report file. A
    finding is its test id, or 'TEST-ID:Setting' where Lynis names a setting; a test that both warns
    and suggests keeps its warning (the stronger finding)."""
    index, found = None, {}
    for line in report:
        key, _, value = line.partition("=")
        if key == "hardening_index" and value.strip().isdigit():
            index = int(value)
        elif key in ("warning[]", "suggestion[]"):
            test, text, details = (value.split("|") + ["", ""])[:3]
            setting = SETTING_DETAIL.match(details)
            finding = f"{test}:{setting.group(1)}" if setting else test
            kind = key[:-2]
            if not (found.get(finding, "").startswith("warning") and kind == "suggestion"):
                found[finding] = f"{kind}: {text}" + (f" ({details})" if setting else "")
    return index, found


def _lynis(target, keep: bool) -> tuple[int | None, dict[str, str]]:
    """One Lynis run per host for both Lynis checks; Lynis is removed again unless it was there or `keep`."""
    had = target.run("dpkg-query -W -f='${Status}' lynis 2>/dev/null").stdout.startswith("install ok")
    try:
        out = target.run(LYNIS_RUN).stdout
    finally:
        if not had and not keep:
            target.run(LYNIS_REMOVE)
    return lynis_findings(out.splitlines())


def _lynis_fact(target, request):
    keep = request.config.getoption("--hardkit-keep-lynis")
    return target.fact("ext:lynis", lambda t: _lynis(t, keep))


@pytest.mark.control("ext-lynis-01")
def test_lynis_hardening_index(target, request):
    """Lynis: the hardening index reaches the inventory's minimum (85 on a container, 90 otherwise)"""
    index, _ = _lynis_fact(target, request)
    assert index is not None, "Lynis wrote no hardening_index (did it run?)"
    minimum = lynis_min_index(target.data)
    assert index >= minimum, f"Lynis hardening index {index}, minimum {minimum}"


def undeclined(found: dict[str, str], waivers: dict, host: str) -> list[str]:
    """Lynis findings on `host` that no current waiver declines (a waiver of TEST-ID:Setting, else of
    the whole TEST-ID): each 'FINDING warning|suggestion: text', saying so where a waiver has expired."""
    out = []
    for finding, what in sorted(found.items()):
        waiver = next((w for w in (waivers.get(finding), waivers.get(finding.split(":")[0]))
                       if w is not None and w.applies_to(host)), None)
        if waiver is None:
            out.append(f"{finding} {what}")
        elif waiver.expired():
            out.append(f"{finding} {what} (its waiver expired on {waiver.expires}, owner: {waiver.owner})")
    return out


@pytest.mark.control("ext-lynis-02")
def test_lynis_findings_fixed_or_declined(target, request):
    """Lynis: every warning and suggestion is fixed, or declined with a current reason ([lynis] in waivers.toml)"""
    _, found = _lynis_fact(target, request)
    left = undeclined(found, load_lynis_waivers(), target.name)
    assert not left, f"{len(left)} Lynis findings neither fixed nor declined: " + "; ".join(left)
