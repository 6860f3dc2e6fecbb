"""The foundation loop on a real lab target: up → deploy → verify → deploy again (no change) → down."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from sandbox import lab as lab_mod
from sandbox import network
from tests.integration.labkit import boot, hardkit

pytestmark = pytest.mark.lab
PREFIX = "itloop"


@pytest.fixture(scope="module")
def lab():
    handle = boot(PREFIX, count=2)
    yield handle
    handle.down()


def test_pristine_targets_look_like_a_fresh_vps(lab):
    for name in lab.names:
        res = lab.ssh(name, "id -un; test -s /etc/machine-id && echo mid; "
                            "cat /etc/ssh/sshd_config.d/50-cloud-init.conf; "
                            "for p in nftables fail2ban sudo unattended-upgrades auditd; do "
                            "dpkg -s $p >/dev/null 2>&1 && echo has-$p; done; passwd -S root")
        assert res.returncode == 0, res.stderr
        out = res.stdout.split()
        assert out[0] == "root" and "mid" in out
        assert "PasswordAuthentication" in res.stdout  # the provider leftover the hardening must beat
        assert not [w for w in out if w.startswith("has-")], "the image must not preinstall what the deploy installs"
        assert "root L " in res.stdout, "root's password must be locked"
        # Booted to the end, as a VPS is handed over: no unit failed, logins other than root's are open.
        booted = lab.ssh(name, "systemctl is-system-running; test -e /run/nologin && echo nologin")
        assert booted.stdout.split() == ["running"], booted.stdout + booted.stderr
    # Each target has its own host keys and machine-id, as a provider would give it.
    ids = {lab.ssh(n, "cat /etc/machine-id").stdout for n in lab.names}
    keys = {lab.ssh(n, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] for n in lab.names}
    assert len(ids) == len(lab.names) and len(keys) == len(lab.names)


def test_deploy_then_verify_then_idempotent(lab, tmp_path):
    first = lab.deploy()
    assert first.ok, {n: (h.failed, h.error) for n, h in first.hosts.items()}
    assert first.changed_ops > 0
    second = lab.deploy()
    assert second.ok
    changed = {n: h.changed for n, h in second.hosts.items() if h.changed}
    assert not changed, f"second deploy changed: {changed}"
    assert second.raw["results"]["totals"]["success"] == 0
    junit = tmp_path / "junit.xml"
    res = lab.verify("--junit", str(junit), "--report-dir", str(tmp_path / "report"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "compliance.json").read_text())
    hosts = {r["host"] for r in report["controls"]}
    assert hosts == set(lab.names)
    assert all(r["status"] in ("PASS", "SKIP", "WAIVED", "NOT VERIFIED") for r in report["controls"])
    assert "<testcase" in junit.read_text()


def test_verify_fails_on_a_broken_control(lab, tmp_path):
    name = lab.names[0]
    assert lab.ssh(name, "systemctl start no-such-thing.service || systemd-run --unit=hk-broken false").returncode in (0, 1)
    try:
        res = lab.verify("--report-dir", str(tmp_path), "-k", "failed_units")
        assert res.returncode != 0
        report = json.loads((tmp_path / "compliance.json").read_text())
        row = next(r for r in report["controls"] if r["host"] == name and r["control"] == "hk-base-03")
        assert row["status"] == "FAIL" and "hk-broken" in " ".join(row["details"])
    finally:
        lab.ssh(name, "systemctl reset-failed")


def test_up_is_safe_to_repeat_and_status_lists_targets(lab):
    before = {t.name: t.ssh_port for t in lab_mod.all_targets(PREFIX)}
    res = hardkit("sandbox", "up", "--count", "2", "--name", PREFIX)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(lab.inventory_path)
    after = {t.name: t.ssh_port for t in lab_mod.all_targets(PREFIX)}
    assert before == after, "re-running up must keep running targets"
    status = json.loads(hardkit("sandbox", "status", "--json").stdout)
    mine = [r for r in status if r["name"].startswith(PREFIX + "-")]
    assert len(mine) == 2 and all(r["running"] for r in mine)


def test_sandbox_ssh_runs_a_command(lab):
    res = hardkit("sandbox", "ssh", lab.names[0], "--", "hostname")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == lab.names[0]


def test_down_leaves_nothing_behind():
    prefix = "itdown"
    handle = boot(prefix, count=1)
    t = lab_mod.all_targets(prefix)[0]
    pids = [p for p in t.pids.values() if p]
    root = t.dir / "root"
    handle.down()
    assert not lab_mod.all_targets(prefix)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{network.ns_tag()}-{prefix}-" not in netns
    assert str(root) not in open("/proc/self/mounts").read()
    assert not t.dir.exists()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
