"""The alerts role's rendered files and data, checked on the controller with the real validators.

Units: `systemd-analyze verify` and `security --offline` (the notifier and its hook at most
MAX_EXPOSURE); the OnFailure= drop-in as systemd merges it (a scratch unit tree read by
`systemd-analyze`... is not possible offline, so the drop-ins' order is checked by file name, the
rule systemd applies); the egress table with `nft -c`; the fail2ban files with `fail2ban-client -t`
on a copy of the controller's /etc/fail2ban; the inventory keys through `hardkit deploy` (exit 2,
every problem at once, no host touched).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from roles import alert_notify
from roles import alerts as role
from roles import alerts_data as d
from roles.bot import SANDBOX as BOT_SANDBOX
from roles.ops import quiet_or_fail
from tests.unit.inventory_files import one_host_inventory
from tests.unit.test_bot_egress import nft_check

REPO = Path(__file__).resolve().parents[2]
WEBHOOK = {"alert_webhook_url": "https://198.51.100.7/hook"}


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    if not shutil.which("systemd-analyze"):
        pytest.skip("needs systemd-analyze (package systemd)")
    for name, text in role.render_units(WEBHOOK).items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", [d.UNIT, d.HOOK_TEMPLATE, d.EGRESS_UNIT, d.EGRESS_REFRESH_UNIT,
                                  d.EGRESS_REFRESH_TIMER])
def test_units_pass_systemd_analyze_verify(unit_dir, unit):
    cmd = quiet_or_fail("systemd-analyze verify {path}").replace("{path}", str(unit_dir / unit))
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=unit_dir)
    assert res.returncode == 0, res.stderr


def exposure(path: Path) -> float:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(path)],
                         capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert score, res.stdout[-500:] + res.stderr
    return float(score.group(1))


@pytest.mark.parametrize("unit", [d.UNIT, d.HOOK_TEMPLATE])
def test_the_notifier_and_its_hook_score_at_most_the_limit(unit_dir, unit):
    assert exposure(unit_dir / unit) <= d.MAX_EXPOSURE


def test_the_exposure_check_can_fail(unit_dir):
    text = (unit_dir / d.UNIT).read_text()
    for key, value in BOT_SANDBOX:
        text = text.replace(f"{key}={value}\n", "")
    bare = unit_dir / "bare" / d.UNIT
    bare.parent.mkdir()
    bare.write_text(text)
    assert exposure(bare) > d.MAX_EXPOSURE


def test_the_notifier_runs_as_its_user_and_reads_the_key_as_an_encrypted_credential(unit_dir):
    text = (unit_dir / d.UNIT).read_text()
    assert f"User={d.ALERT_USER}\n" in text and "SupplementaryGroups=systemd-journal\n" in text
    assert f"LoadCredentialEncrypted=webhook-key:/etc/credstore.encrypted/hardkit-alert.webhook-key\n" in text
    assert "Environment=" not in text and "key" not in text.split("ExecStart=")[1].split("\n")[0]
    without = role.render_units({})[d.UNIT]
    assert "LoadCredentialEncrypted" not in without  # no webhook: no credential to wait for


def test_the_notifier_can_read_the_boot_id_journalctl_needs(unit_dir):
    """ProcSubset=pid hides /proc/sys/kernel/random/boot_id: `journalctl --follow` then fails (seen on a lab host)."""
    for unit in (d.UNIT, d.HOOK_TEMPLATE):
        assert "ProcSubset=pid" not in (unit_dir / unit).read_text()


def test_the_hook_has_no_network(unit_dir):
    text = (unit_dir / d.HOOK_TEMPLATE).read_text()
    assert "PrivateNetwork=yes" in text and "IPAddressDeny=any" in text
    assert "ExecStart=/usr/bin/python3 /usr/local/sbin/hardkit-alert unit-failed %i" in text


def test_onfailure_covers_every_hardkit_unit_and_is_replaced_on_the_notifiers_own():
    """A drop-in of the same name in a unit's own folder replaces the prefix folder's (an empty
    OnFailure= would not: systemd cannot reset a dependency list, seen on a lab host)."""
    assert d.ONFAILURE_DROPIN.startswith("/etc/systemd/system/hardkit-.service.d/")
    assert Path(d.ONFAILURE_DROPIN).name == d.NO_ONFAILURE_DROPIN
    assert "hardkit-alert.service" in d.NO_ONFAILURE_UNITS and "hardkit-alert-failed@.service" in d.NO_ONFAILURE_UNITS
    from roles.ops import render
    text = render("alerts/no-onfailure.conf.j2", dropin=d.ONFAILURE_DROPIN)
    assert not [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "OnFailure=hardkit-alert-failed@%n.service" in render("alerts/onfailure.conf.j2", onfailure=d.ONFAILURE)


def test_egress_table_passes_nft_c_and_judges_only_the_notifiers_uid(tmp_path):
    text = role.render_egress_ruleset().replace(f'"{d.ALERT_USER}"', '"nobody"')  # a user this controller has
    path = tmp_path / "alert-egress.nft"
    path.write_text(text)
    res = nft_check(path)
    assert res.returncode == 0, res.stderr
    assert f"table inet {d.EGRESS_TABLE} {{" in text and "table inet hardkit {" not in text
    assert 'meta skuid "nobody" jump alert_egress' in text


def test_egress_config_lists_the_webhooks_host_and_port_for_the_tool():
    from roles import bot_egress_refresh as tool
    import json
    cfg = json.loads(role.render_egress_config({"alert_webhook_url": "https://hooks.example.org:8443/x"}))
    assert cfg["endpoints"] == ["hooks.example.org:8443"] and cfg["table"] == d.EGRESS_TABLE
    assert json.loads(role.render_egress_config({}))["endpoints"] == []
    assert d.webhook_endpoint("https://[2001:db8::1]/h") == "[2001:db8::1]:443"
    assert tool.parse_endpoint(d.webhook_endpoint("http://10.0.0.5/h")).port == 80


def test_fail2ban_files_pass_fail2ban_client_t(tmp_path):
    if not Path("/etc/fail2ban/jail.conf").is_file() or not shutil.which("fail2ban-client"):
        pytest.skip("needs fail2ban installed on this controller")
    from roles import fail2ban
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    (conf / "jail.d" / "hardkit.local").write_text(fail2ban.render({"ssh_allow_from": ["10.0.2.2/32"]}))
    for path, text in role.render_fail2ban().items():
        (conf / path.removeprefix("/etc/fail2ban/")).write_text(text)
    res = subprocess.run(["fail2ban-client", "-c", str(conf), "-t"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout
    dump = subprocess.run(["fail2ban-client", "-c", str(conf), "-d"], capture_output=True, text=True).stdout
    for jail, ban in (("sshd", "nftables-multiport"), ("recidive", "nftables-allports")):
        assert f"['set', '{jail}', 'addaction', 'hardkit-alert']" in dump  # added to the jail's own ban action
        assert f"/usr/local/sbin/hardkit-alert ban {jail} <ip> <failures>" in dump
        assert f"['multi-set', '{jail}', 'action', '{ban}'" in dump


def test_config_passes_the_tools_own_check(tmp_path):
    import json
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(role.notifier_config(WEBHOOK, "vps1")))
    assert alert_notify.main(["check-config", str(path)]) == 0


def test_bad_alert_keys_are_all_refused_before_any_host_is_touched(tmp_path):
    inv = one_host_inventory(tmp_path, address="127.0.0.1")
    inv.write_text(inv.read_text().replace('"ssh_allow_from"', '"alert_webhook_url": "ftp://x", '
                                           '"alert_rate_per_hour": 0, "alert_email_to": ["not-an-address"], '
                                           '"ssh_port": 9, "ssh_allow_from"'))
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(inv)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    for key in ("alert_webhook_url", "alert_rate_per_hour", "alert_email_to"):
        assert key in res.stderr


@pytest.mark.parametrize("extra, says", [
    ({"alert_webhook_url": "http://198.51.100.7/h"}, "use https://"),
    ({"alert_webhook_url": "http://hooks.example.org/h", "alert_webhook_allow_http": True}, "only to a private"),
    ({"alert_webhook_url": "https://hooks.example.org:8443/h"}, "egress_allow rule for tcp port 8443"),
    ({"alert_webhook_url": "https://hooks.example.org/h"}, "secrets_env is not"),
])
def test_webhook_data_taken_together(extra, says):
    assert any(says in p for p in d.host_problems(extra)), d.host_problems(extra)


def test_a_lab_http_receiver_is_allowed_when_said_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HARDKIT_SECRETS_DIR", str(tmp_path))
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / f"{d.KEY_SECRET}.age").write_text("x")
    ok = {"alert_webhook_url": "http://10.0.0.5/h", "alert_webhook_allow_http": True, "secrets_env": "lab"}
    assert d.host_problems(ok) == []
