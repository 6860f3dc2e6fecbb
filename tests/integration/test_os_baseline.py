"""The OS baseline on real lab targets.

nspawn (every run): deploy, verify, a second deploy changes nothing; the admin keeps key login
and `sudo -n` through faillock, password aging and umask; unattended-upgrades' dry run picks
security updates only; the reboot guard holds a reboot while a dummy inhibitor (and a logind
block lock) is held and reboots once it is gone; every control holds after a reboot.

The same on a real kernel (vm tier) is tests/integration/test_os_baseline_vm.py.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.oslab import (EXPECTED_SKIPS, boot_id, deploy_ok, derived_inventory, os_changes, os_lab, reboot,
                                     root, ssh, verify, wait_for_new_boot)

pytestmark = pytest.mark.lab
PREFIX = "osit"
#: Packages the lab's dated mirror carries in two versions: the older in the main suite and the
#: newer in bookworm-security (a security update), resp. the older in bookworm-security and the
#: newer in the main suite (a point-release update that security-only must not pick).
SECURITY_UPDATE = ("unzip", "6.0-28")
POINT_RELEASE_UPDATE = (("curl", "7.88.1-10+deb12u5"), ("libcurl4", "7.88.1-10+deb12u5"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from os_lab(PREFIX, "nspawn", tmp_path_factory.mktemp("os"))


@pytest.fixture(scope="module")
def deployed(lab):
    return deploy_ok(lab)


def name(lab) -> str:
    return lab.names[0]


def test_deploy_verify_then_nothing_changes(lab, deployed, tmp_path):
    assert deployed.changed_ops > 0
    second = lab.deploy(inventory_path=lab.os_inventory)
    assert second.ok
    assert not os_changes(second), f"second deploy changed: {os_changes(second)}"
    res = verify(lab, "--report-dir", str(tmp_path))
    assert res.returncode == 0, res.stdout[-4000:]
    rows = json.loads((tmp_path / "compliance.json").read_text())["controls"]
    statuses = {r["control"]: r["status"] for r in rows}
    assert statuses["sysctl-07"] == "PASS" and statuses["os-14"] == "PASS" and statuses["hk-os-upd-02"] == "PASS"
    # The nspawn target is declared a container: what its kernel decides is NOT VERIFIED, saying why.
    not_verified = {r["control"]: r["details"] for r in rows if r["status"] == "NOT VERIFIED"}
    assert {"os-12", "hk-os-aud-01", "hk-os-time-01", "package-08"} <= set(not_verified), sorted(not_verified)
    for control, details in not_verified.items():
        assert all("the host is a container (systemd-nspawn)" in d for d in details), f"{control}: {details}"
    assert not [r for r in rows if r["status"] == "SKIP" and r["control"] in not_verified]
    assert f"{len(not_verified)} not verified" in res.stdout, res.stdout[-2000:]
    skipped = {r["control"]: r["details"] for r in rows if r["status"] == "SKIP"}
    for control, details in skipped.items():
        assert any(why in d for why in EXPECTED_SKIPS for d in details), f"{control} skipped for {details}"


def test_an_undeclared_container_fails_its_kernel_controls(lab, deployed, tmp_path):
    """The same container without `container: True` in its inventory: a skip there would hide a surprise."""
    from tests.integration.labkit import hardkit

    undeclared = derived_inventory(lab, tmp_path, ntp_servers=[lab.ntp_address], container=False)
    res = hardkit("verify", str(undeclared), "--report-dir", str(tmp_path), "-k", "os_12 or time_synchronised")
    assert res.returncode == 1, res.stdout[-3000:]
    rows = json.loads((tmp_path / "compliance.json").read_text())["controls"]
    assert {r["control"]: r["status"] for r in rows} == {"os-12": "FAIL", "hk-os-time-01": "FAIL"}
    assert all("does not declare it (container: True)" in " ".join(r["details"]) for r in rows), rows


#: A package a role installs that nothing else needs (the test removes it so that the deploy must run apt).
APT_PACKAGE = "needrestart"


def test_a_deploy_waits_for_another_apt_instead_of_failing(lab, deployed):
    """A fresh VPS often runs unattended-upgrades at first boot, holding dpkg's lock for minutes: a deploy that
    needs apt then waits for the lock (roles/baseline.py) and converges, instead of failing at its first package
    (the vm tier's first deploy failed so in a CI run)."""
    n = name(lab)
    released = "/run/hardkit-test-dpkg-lock-released"
    hold = ("import fcntl, time; f = open('/var/lib/dpkg/lock-frontend', 'w'); fcntl.lockf(f, fcntl.LOCK_EX); "
            f"open('{released}.held', 'w').close(); time.sleep(25); open('{released}', 'w').write(str(time.time()))")
    setup = root(lab, n, f"apt-get -y -q purge {APT_PACKAGE} >/dev/null 2>&1 && rm -f {released} {released}.held && "
                         f"systemd-run --quiet --unit=hardkit-test-dpkg-lock python3 -c \"{hold}\" && "
                         f"for i in $(seq 50); do [ -e {released}.held ] && break; sleep 0.2; done; "
                         f"[ -e {released}.held ] && [ ! -e {released} ]")
    assert setup.returncode == 0, setup.stdout + setup.stderr  # removed, and the lock is held as the deploy starts
    deploy_ok(lab)
    after = root(lab, n, f"cat {released}; echo; stat -c %Y /var/lib/dpkg/info/{APT_PACKAGE}.list")
    lines = after.stdout.split()
    assert after.returncode == 0 and len(lines) == 2, after.stdout + after.stderr
    # Installed again, and only once the holder had let go of the lock.
    assert int(lines[1]) >= int(float(lines[0])), f"installed at {lines[1]}, lock released at {lines[0]}"


def test_admin_keeps_key_login_and_sudo(lab, deployed):
    n = name(lab)
    admin = lab.host_data(n)["admin_user"]
    res = ssh(lab, n, "umask; sudo -n true && echo sudo-ok; crontab -l 2>&1; true", user=admin)
    assert res.returncode == 0 and "sudo-ok" in res.stdout, res.stderr
    assert res.stdout.split()[0] == "0027"
    assert "not allowed" in res.stdout, f"cron must be root-only: {res.stdout}"


def test_su_refused_even_with_the_right_password(lab, deployed):
    """pam_wheel: the admin is not in the su group, so knowing root's password is not enough."""
    from roles.accounts import SU_GROUP

    n = name(lab)
    admin = lab.host_data(n)["admin_user"]
    password = "Lab-only-Passw0rd-9"
    # su reads the password from a terminal: `script` gives it one and types the password in.
    attempt = f"(sleep 1; echo '{password}') | script -qec \"su -c 'id -un' root\" /dev/null; echo rc=$?"
    assert root(lab, n, f"echo 'root:{password}' | chpasswd").returncode == 0
    try:
        refused = ssh(lab, n, attempt, user=admin).stdout
        assert "Permission denied" in refused and "rc=1" in refused, refused
        root(lab, n, f"gpasswd -a {admin} {SU_GROUP}")
        allowed = ssh(lab, n, attempt, user=admin).stdout  # control: the same password works for a member
        assert "root" in allowed.split() and "rc=0" in allowed, allowed
    finally:
        root(lab, n, f"gpasswd -d {admin} {SU_GROUP}; usermod -p '!' root; faillock --user root --reset")


def test_faillock_and_aging_cannot_lock_out_the_admin(lab, deployed):
    n = name(lab)
    admin = lab.host_data(n)["admin_user"]
    setup = root(lab, n, "apt-get install -y -q pamtester >/dev/null 2>&1 && "
                         f"for i in 1 2 3 4 5 6 7; do echo wrong | pamtester login {admin} authenticate; done; "
                         f"faillock --user {admin} | grep -c ' V$'; "
                         f"chage -d $(date -d '-400 days' +%F) {admin}", timeout=300)
    assert int(setup.stdout.split()[-1]) >= 5, f"password failures were not counted: {setup.stdout}{setup.stderr}"
    try:
        res = ssh(lab, n, "sudo -n id -un", user=admin)
        assert res.returncode == 0 and res.stdout.strip() == "root", \
            f"locked-out admin: {res.stdout} {res.stderr}"
        locked = root(lab, n, f"echo wrong | pamtester login {admin} authenticate 2>&1; true")
        assert "denied" in locked.stdout.lower() or "failure" in locked.stdout.lower()
        again = lab.deploy(inventory_path=lab.os_inventory)  # pyinfra itself still gets in as the admin
        assert again.ok and all(h.login.startswith(admin) for h in again.hosts.values())
    finally:
        root(lab, n, f"faillock --user {admin} --reset; chage -d $(date +%F) {admin}; apt-get purge -y -q pamtester")


def test_unattended_upgrades_picks_security_updates_only(lab, deployed):
    n = name(lab)
    pkg, old = SECURITY_UPDATE
    pins = " ".join(f"{p}={v}" for p, v in [SECURITY_UPDATE, *POINT_RELEASE_UPDATE])
    prep = root(lab, n, f"apt-get install -y -q --allow-downgrades {pins} >/dev/null 2>&1; echo rc=$?", timeout=600)
    assert "rc=0" in prep.stdout, prep.stdout + prep.stderr
    selected, allowed = _dry_run(lab, n)
    assert allowed == ["origin=Debian,codename=bookworm-security,label=Debian-Security"], allowed
    assert pkg in selected, f"{pkg} {old} has a security update but was not selected: {selected}"
    assert "curl" not in selected and "libcurl4" not in selected, f"point-release update selected: {selected}"
    for package in selected:
        policy = root(lab, n, f"apt-cache policy {package}").stdout
        assert "-security" in _candidate_source(policy), f"{package} selected from outside security: {policy}"

    # With point releases allowed by the inventory, the same dry run also takes curl.
    points = lab.os_folder / "points"
    points.mkdir(exist_ok=True)
    widened = derived_inventory(lab, points, ntp_servers=[lab.ntp_address], updates_point_releases=True)
    assert lab.deploy(inventory_path=widened).ok
    try:
        selected, allowed = _dry_run(lab, n)
        assert "curl" in selected and pkg in selected and len(allowed) == 3, (selected, allowed)
    finally:
        assert lab.deploy(inventory_path=lab.os_inventory).ok
        root(lab, n, "apt-get install -y -q unzip curl libcurl4 >/dev/null 2>&1", timeout=600)


def _candidate_source(policy: str) -> str:
    """The archive line under the candidate version in `apt-cache policy` output."""
    candidate = re.search(r"Candidate: (\S+)", policy).group(1)
    lines = policy.splitlines()
    for i, line in enumerate(lines):
        if line.strip().lstrip("*").split()[:1] == [candidate] and i + 1 < len(lines):
            return lines[i + 1]
    return ""


def _dry_run(lab, n) -> tuple[list[str], list[str]]:
    """(packages unattended-upgrades would upgrade, the origins it allows), from its own debug output."""
    out = root(lab, n, "unattended-upgrade --dry-run -d 2>&1", timeout=600).stdout
    allowed = re.search(r"^Allowed origins are: (.*)$", out, re.M)
    picked = re.search(r"^Packages that will be upgraded: (.*)$", out, re.M) or \
        re.search(r"^pkgs that look like they should be upgraded: (.*)$", out, re.M)
    assert allowed, out[-3000:]
    return (picked.group(1).split() if picked else []), allowed.group(1).strip().split(", ")


def test_noexec_tmp_leaves_debconf_working(lab, deployed):
    res = root(lab, name(lab), "apt-get install -y --reinstall tzdata 2>&1; echo rc=$?", timeout=600)
    assert "rc=0" in res.stdout and "Permission denied" not in res.stdout and "Can't exec" not in res.stdout, \
        res.stdout[-2000:]


def test_reboot_guard_holds_then_reboots(lab, deployed):
    n = name(lab)
    from roles.updates import GUARD, GUARD_UNIT, INHIBIT_DIR

    holder = root(lab, n, "systemctl stop hk-dummy-holder 2>/dev/null; "
                          "systemd-run --unit=hk-dummy-holder --property=Group=hardkit-inhibit sleep 900 >/dev/null && "
                          "systemctl show -p MainPID --value hk-dummy-holder")
    pid = int(holder.stdout.strip())
    entry = json.dumps({"holder": "dummy", "reason": "test exposure", "since": "2026-01-01T00:00:00+00:00",
                        "pid": pid})
    before = boot_id(lab, n)
    res = root(lab, n, f"touch /run/reboot-required && echo '{entry}' > {INHIBIT_DIR}/dummy && "
                       f"systemctl start --no-block {GUARD_UNIT} && sleep 8 && {GUARD} status --json")
    state = json.loads(res.stdout.strip().splitlines()[-1])
    assert state["decision"] == "held" and state["holders"][0]["holder"] == "dummy", state
    log = root(lab, n, f"journalctl -u {GUARD_UNIT} -o cat --no-pager | tail -3").stdout
    assert "held by: dummy" in log, log
    assert boot_id(lab, n) == before, "rebooted while held"

    # A logind block lock on shutdown holds it as well.
    lock = root(lab, n, "systemd-run --unit=hk-dummy-lock systemd-inhibit --what=shutdown --mode=block "
                        "--who=dummy-lock --why=test sleep 900 >/dev/null; sleep 2; "
                        f"{GUARD} status --json; systemctl stop hk-dummy-lock")
    holders = json.loads(lock.stdout.strip().splitlines()[-1])["holders"]
    assert any(h["source"] == "systemd-logind" and h["holder"] == "dummy-lock" for h in holders), holders

    # The holder goes away (its pid dies, the file stays): stale, ignored, the guard reboots.
    root(lab, n, "systemctl stop hk-dummy-holder")
    wait_for_new_boot(lab, n, before, timeout=240)
    after = root(lab, n, f"journalctl -b -1 -u {GUARD_UNIT} -o cat --no-pager; {GUARD} status --json").stdout
    assert "ignoring stale inhibitor dummy" in after and "rebooting: required since" in after, after
    assert json.loads(after.strip().splitlines()[-1])["decision"] == "none-required"


def test_pending_reboot_is_reported(lab, deployed, tmp_path):
    n = name(lab)
    root(lab, n, "touch -d '-10 days' /run/reboot-required")
    try:
        res = verify(lab, "--report-dir", str(tmp_path), "-k", "reboot_pending")
        row = next(r for r in json.loads((tmp_path / "compliance.json").read_text())["controls"]
                   if r["control"] == "hk-os-upd-06")
        assert row["status"] == "FAIL" and "reboot required for 10.0 days" in " ".join(row["details"]), row
    finally:
        root(lab, n, "rm -f /run/reboot-required")


def test_every_control_holds_after_reboot(lab, deployed, tmp_path):
    reboot(lab, name(lab))
    res = verify(lab, "--report-dir", str(tmp_path))
    assert res.returncode == 0, res.stdout[-4000:]
    again = lab.deploy(inventory_path=lab.os_inventory)
    assert again.ok and not os_changes(again), os_changes(again)

