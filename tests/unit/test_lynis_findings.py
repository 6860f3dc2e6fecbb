"""ext-lynis-02 reads Lynis' report: every finding is fixed or declined by a current waiver for this host."""

from __future__ import annotations

import datetime

from deploy.waivers import Waiver
from tests.compliance.test_external_audit import lynis_findings, undeclined

#: Lines as Lynis 3.0.8 (Debian 12) writes them into /var/log/lynis-report.dat.
REPORT = [
    "hardening_index=81",
    "warning[]=KRNL-5830|Reboot of system is most likely needed|-|text:reboot|",
    "suggestion[]=KRNL-5830|Determine why /vmlinuz is missing|-|-|",
    "suggestion[]=FILE-6310|Consider a separate partition for /home|-|-|",
    "suggestion[]=DEB-0280|Install libpam-tmpdir to set $TMP and $TMPDIR for PAM sessions|-|-|",
    "suggestion[]=SSH-7408|Consider hardening SSH configuration|MaxSessions (set 10 to 2)|-|",
    "suggestion[]=SSH-7408|Consider hardening SSH configuration|Port (set 22 to )|-|",
]


def test_the_index_and_one_finding_per_test_are_read():
    index, found = lynis_findings(REPORT)
    assert index == 81
    assert found == {"KRNL-5830": "warning: Reboot of system is most likely needed",
                     "FILE-6310": "suggestion: Consider a separate partition for /home",
                     "DEB-0280": "suggestion: Install libpam-tmpdir to set $TMP and $TMPDIR for PAM sessions",
                     "SSH-7408:MaxSessions": "suggestion: Consider hardening SSH configuration (MaxSessions (set 10 to 2))",
                     "SSH-7408:Port": "suggestion: Consider hardening SSH configuration (Port (set 22 to ))"}


def test_no_index_when_lynis_did_not_run():
    assert lynis_findings([]) == (None, {})


def _waiver(test, expires=datetime.date(2099, 1, 1), hosts=()):
    return Waiver(test, "because", "ops", expires, hosts)


def test_a_finding_needs_a_current_waiver_for_this_host():
    _, found = lynis_findings(REPORT)
    waivers = {"KRNL-5830": _waiver("KRNL-5830"), "FILE-6310": _waiver("FILE-6310", hosts=("other",)),
               "DEB-0280": _waiver("DEB-0280", expires=datetime.date(2020, 1, 1)),
               "SSH-7408:MaxSessions": _waiver("SSH-7408:MaxSessions")}
    left = undeclined(found, waivers, "vps1")
    assert left[0] == "DEB-0280 suggestion: Install libpam-tmpdir to set $TMP and $TMPDIR for PAM sessions " \
                      "(its waiver expired on 2020-01-01, owner: ops)"
    assert left[1] == "FILE-6310 suggestion: Consider a separate partition for /home"
    assert left[2].startswith("SSH-7408:Port suggestion")  # declining MaxSessions declines nothing else
    assert len(left) == 3
    assert undeclined(found, {"SSH-7408": _waiver("SSH-7408")}, "vps1")[-1].startswith("KRNL-5830")  # the whole test
    assert undeclined(found, {t: _waiver(t) for t in found}, "vps1") == []
