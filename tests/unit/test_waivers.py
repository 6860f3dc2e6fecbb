"""Waivers carry reason, owner and expiry; a bad waiver file stops verify before any host is contacted."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import catalog
from deploy.waivers import WaiverError, load_lynis_waivers, load_waivers, parse, parse_all
from tests.unit.inventory_files import one_host_inventory

REPO = Path(__file__).resolve().parents[2]
GOOD = '[waiver."sshd-09"]\nreason = "r"\nowner = "ops team"\nexpires = 2027-06-30\nhosts = ["a"]\n'


def test_a_complete_waiver_loads():
    w = parse(GOOD, set(catalog.load()))["sshd-09"]
    assert (w.owner, w.expires, w.hosts) == ("ops team", datetime.date(2027, 6, 30), ("a",))
    assert w.applies_to("a") and not w.applies_to("b")


def test_expiry_is_inclusive_of_its_date():
    w = parse(GOOD)["sshd-09"]
    assert not w.expired(datetime.date(2027, 6, 30)) and w.expired(datetime.date(2027, 7, 1))


def test_every_problem_is_listed_at_once():
    text = ('[waiver."no-such-control"]\nreason = "r"\nowner = "o"\nexpires = 2027-01-01\n'
            '[waiver."sshd-09"]\nreason = ""\nexpires = "soon"\nhosts = "a"\nextra = 1\n')
    with pytest.raises(WaiverError) as e:
        parse(text, set(catalog.load()), "w.toml")
    lines = str(e.value).splitlines()
    for words in ("no-such-control: no control has this id", "sshd-09: unknown key 'extra'", "sshd-09: no reason",
                  "sshd-09: no owner", "expires must be a date", "hosts must be a list"):
        assert any(words in line for line in lines), (words, lines)
    assert len(lines) == 6


def test_the_shipped_waivers_are_valid_and_current():
    waivers = load_waivers(known_controls=set(catalog.load()))
    assert waivers and all(not w.expired() for w in waivers.values())


def test_verify_refuses_a_bad_waiver_file_before_contacting_any_host(tmp_path):
    # 192.0.2.1 (TEST-NET) would time out: a contact attempt would show as a slow run and another exit code.
    inv = one_host_inventory(tmp_path, address="192.0.2.1")
    bad = tmp_path / "waivers.toml"
    bad.write_text('[waiver."hk-nope-01"]\nreason = "r"\nowner = "o"\nexpires = 2027-01-01\n'
                   '[waiver."sshd-09"]\nreason = "r"\n')
    # The installed `hardkit` script, run outside the repository (as an operator runs it).
    res = subprocess.run([str(Path(sys.executable).parent / "hardkit"), "verify", str(inv), "--waivers", str(bad),
                          "--report-dir", str(tmp_path / "r")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "hk-nope-01: no control has this id" in res.stderr and "sshd-09: no owner" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "r").exists()


LYNIS = ('[lynis."KRNL-5830"]\nreason = "no kernel of its own"\nowner = "o"\nexpires = 2027-06-30\nhosts = ["a"]\n'
         '[lynis."SSH-7408:MaxSessions"]\nreason = "r"\nowner = "o"\nexpires = 2027-06-30\n'
         '[lynis."LYNIS"]\nreason = "r"\nowner = "o"\nexpires = 2027-06-30\n')


def test_a_lynis_finding_waiver_loads_beside_control_waivers():
    both = parse_all(GOOD + LYNIS, set(catalog.load()))
    assert set(both["waiver"]) == {"sshd-09"} and set(both["lynis"]) == {"KRNL-5830", "SSH-7408:MaxSessions", "LYNIS"}
    w = both["lynis"]["KRNL-5830"]
    assert (w.reason, w.hosts) == ("no kernel of its own", ("a",))


def test_a_bad_lynis_waiver_is_listed_with_every_other_problem():
    text = (GOOD.replace("ops team", "") + '[lynis."not-an-id"]\nreason = "r"\nowner = "o"\nexpires = 2027-06-30\n'
            '[lynis."FILE-6310"]\nreason = "r"\nexpires = 2027-06-30\n[lynsi."X"]\n')
    with pytest.raises(WaiverError) as e:
        parse_all(text, set(catalog.load()), "w.toml")
    lines = str(e.value).splitlines()
    for words in ("unknown top-level key 'lynsi'", "waiver sshd-09: no owner", "lynis not-an-id: not a Lynis test id",
                  "lynis FILE-6310: no owner"):
        assert any(words in line for line in lines), (words, lines)
    assert len(lines) == 4


def test_the_shipped_lynis_waivers_are_current():
    assert all(not w.expired() for w in load_lynis_waivers().values())
