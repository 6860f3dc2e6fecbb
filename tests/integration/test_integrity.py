"""AIDE and rkhunter on a real lab target, one deploy (without the bot: the integrity roles do not
depend on it, and it would add a minute).

A fresh deployed host checks clean; a file changed outside a deploy makes the next check's unit
fail, naming exactly that file first; a redeploy that changes the host (here: a new check time)
takes its own changes in, so the check passes again; a redeploy that changes nothing leaves the
baseline alone; rkhunter scans the deployed host clean; integrity_enabled false stops the timers and
verify skips the hk-int controls, saying why.
"""

from __future__ import annotations

import json
import time

import pytest

from roles import integrity_data as d
from tests.integration.labkit import boot, hardkit
from tests.integration.oslab import derived_inventory, root

pytestmark = pytest.mark.lab
PREFIX = "aid"
#: A file the deploy installs (roles/updates.py), so the redeploy puts it back and changes the host.
WATCHED = "/etc/hardkit/reboot-guard.json"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    handle = boot(PREFIX, count=1)
    try:
        handle.inv = derived_inventory(handle, tmp_path_factory.mktemp("integrity"), bot_enabled=False)
        handle.inv_later = derived_inventory(handle, tmp_path_factory.mktemp("integrity-later"),
                                             bot_enabled=False, integrity_check_time="06:45")
        yield handle
    finally:
        handle.down()


def name(lab) -> str:
    return lab.names[0]


@pytest.fixture(scope="module")
def deployed(lab):
    started = time.monotonic()
    result = lab.deploy(inventory_path=lab.inv)
    print(f"\nfresh deploy without the bot, with the integrity role: {time.monotonic() - started:.1f} s")
    assert result.ok, {n: (h.failed, h.error) for n, h in result.hosts.items()}
    # The scan takes minutes: it runs while the AIDE tests that change nothing rkhunter reads go on,
    # and is waited for before the first redeploy (which re-records rkhunter's file properties).
    root(lab, name(lab), f"systemctl start --no-block {d.RKHUNTER_SCAN_UNIT}")
    lab.rkhunter_started = time.monotonic()
    return result


def start(lab, unit: str, timeout: float = 1800) -> tuple[int, list[str]]:
    """Run a unit now; its exit and the journal lines of this run (by its invocation id: a `--since` of
    whole seconds also took in the last line of a run that ended in the same second)."""
    res = root(lab, name(lab), f"systemctl start {unit}", timeout=timeout)
    # journald may not have written the run's lines yet when `systemctl start` returns on a loaded host
    # (a CI run read none once): wait a little for the first.
    deadline = time.monotonic() + 20
    while True:
        log = root(lab, name(lab), "journalctl _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value "
                                   f"{unit}) -o cat --no-pager").stdout
        lines = [line for line in log.splitlines() if not line.startswith(("Starting ", "Finished ", unit))]
        if lines or time.monotonic() > deadline:
            return res.returncode, lines
        time.sleep(1)


def test_fresh_host_checks_clean(lab, deployed):
    st = root(lab, name(lab), f"stat -c '%U %a' {d.AIDE_DIR} {d.AIDE_DB}").stdout.split("\n")
    assert st[:2] == ["root 700", "root 600"], st
    started = time.monotonic()
    rc, log = start(lab, d.AIDE_CHECK_UNIT)
    print(f"\nAIDE check of a fresh host: {time.monotonic() - started:.1f} s")
    assert rc == 0 and "AIDE: no change since the baseline" in log, log


def test_change_outside_a_deploy_is_named_and_fails_the_unit(lab, deployed):
    assert root(lab, name(lab), f"echo ' ' >> {WATCHED}").returncode == 0
    rc, log = start(lab, d.AIDE_CHECK_UNIT)
    assert rc != 0
    assert log[0].startswith("AIDE: 1 file(s) differ from the baseline"), log[:5]
    assert log[1] == f"changed: {WATCHED}", log[:5]
    state = root(lab, name(lab), f"systemctl show -p ActiveState --value {d.AIDE_CHECK_UNIT}").stdout.strip()
    assert state == "failed"


def test_rkhunter_scans_the_deployed_host_clean(lab, deployed):
    """The scan started right after the deploy (`deployed`) ends with its unit successful."""
    unit, deadline = d.RKHUNTER_SCAN_UNIT, time.monotonic() + 1800
    while True:
        shown = root(lab, name(lab), f"systemctl show -p ActiveState -p Result {unit}").stdout
        props = dict(line.split("=", 1) for line in shown.split())  # systemd's order, not the order asked
        state, result = props.get("ActiveState"), props.get("Result")
        if state in ("inactive", "failed") or time.monotonic() > deadline:
            break
        time.sleep(5)
    print(f"\nrkhunter scan: {time.monotonic() - lab.rkhunter_started:.1f} s")
    log = root(lab, name(lab), f"journalctl -u {unit} -o cat --no-pager | tail -40").stdout
    assert (state, result) == ("inactive", "success"), log


def test_redeploy_takes_its_changes_in(lab, deployed):
    started = time.monotonic()
    result = lab.deploy(inventory_path=lab.inv_later)
    print(f"\nredeploy that changes the host (and refreshes the baselines): {time.monotonic() - started:.1f} s")
    assert result.ok, result.hosts[name(lab)].error
    assert any(op.startswith("File integrity") and "Baselines" in op for op in result.hosts[name(lab)].changed)
    rc, log = start(lab, d.AIDE_CHECK_UNIT)
    assert rc == 0 and "AIDE: no change since the baseline" in log, log


def test_noop_redeploy_leaves_the_baseline_alone(lab, deployed):
    before = root(lab, name(lab), f"stat -c %Y {d.AIDE_DB}").stdout.strip()
    started = time.monotonic()
    result = lab.deploy(inventory_path=lab.inv_later)
    print(f"\nno-op redeploy: {time.monotonic() - started:.1f} s")
    assert result.ok and not result.hosts[name(lab)].changed, result.hosts[name(lab)].changed
    assert root(lab, name(lab), f"stat -c %Y {d.AIDE_DB}").stdout.strip() == before




def test_integrity_off_stops_the_timers_and_verify_says_why(lab, deployed, tmp_path):
    off = derived_inventory(lab, tmp_path, bot_enabled=False, integrity_enabled=False)
    result = lab.deploy(inventory_path=off)
    assert result.ok, result.hosts[name(lab)].error
    for timer in (d.AIDE_CHECK_TIMER, d.RKHUNTER_SCAN_TIMER):
        state = root(lab, name(lab), f"systemctl is-enabled {timer}; systemctl is-active {timer}").stdout.split()
        assert state == ["disabled", "inactive"], (timer, state)
    res = hardkit("verify", str(off), "--report-dir", str(tmp_path / "r"), "-k", "integrity")
    assert res.returncode == 0, res.stdout[-3000:]
    rows = [r for r in json.loads((tmp_path / "r" / "compliance.json").read_text())["controls"]
            if r["control"].startswith("hk-int-")]
    assert len(rows) == 7 and all(r["status"] == "SKIP" for r in rows), rows
    assert all("integrity_enabled is false" in " ".join(r["details"]) for r in rows), rows
