"""The notifier as the host has it in force (roles/alerts.py, names in roles/alerts_data.py): running
sandboxed as its own user, OnFailure= on every hardkit unit, its key only as an encrypted credential,
its egress limited to the webhook, fail2ban's jails reporting bans.
"""

from __future__ import annotations

import base64
import re

import pytest

from roles import alerts_data as d
from roles.alert_notify import KEY_CREDENTIAL
from roles.alerts import KEY_FILE
from roles.bot_egress_refresh import EXCHANGE_SETS, loaded_elements
from roles.fail2ban import JAILS
from tests.compliance import nft_state, os_state


def _show(target, unit: str, *props: str) -> dict[str, str]:
    out = target.check_output(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.control("hk-alert-01")
def test_notifier_runs_as_its_own_user(target):
    """The notifier's unit is active and enabled, its process runs as its own unprivileged user"""
    show = _show(target, d.UNIT, "ActiveState", "UnitFileState", "User", "MainPID")
    assert show.get("ActiveState") == "active" and show.get("UnitFileState") == "enabled", show
    assert show.get("User") == d.ALERT_USER, show
    owner = target.check_output(f"ps -o user= -p {int(show['MainPID'])}").strip()
    assert owner == d.ALERT_USER, f"main process runs as {owner!r}"
    account = next((row for row in os_state.passwd(target) if row[0] == d.ALERT_USER), None)
    assert account and account[6] in ("/usr/sbin/nologin", "/bin/false"), f"{d.ALERT_USER} can log in: {account}"


@pytest.mark.control("hk-alert-02")
def test_notifier_exposure(target):
    """`systemd-analyze security` scores the notifier and its failure hook at or below the allowed exposure"""
    for unit in (d.UNIT, d.HOOK_TEMPLATE.replace("@.", "@hardkit-bot.service.")):
        out = target.check_output(f"systemd-analyze security {unit} 2>&1")
        found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
        assert found, out[-500:]
        assert float(found.group(1)) <= d.MAX_EXPOSURE, f"{unit}: exposure {found.group(1)} > {d.MAX_EXPOSURE}"


@pytest.mark.control("hk-alert-03")
def test_every_hardkit_unit_alerts_on_failure(target):
    """Every hardkit-*.service starts the alert hook when it fails; the notifier's own units do not"""
    names = target.check_output("systemctl list-unit-files --no-legend --type=service 'hardkit-*' "
                                "| awk '{print $1}'").split()
    services = [n for n in names if not n.endswith("@.service")]
    assert d.UNIT in services and len(services) > 3, names
    wrong = []
    for unit in services:
        have = _show(target, unit, "OnFailure").get("OnFailure", "")
        want = "" if unit in d.NO_ONFAILURE_UNITS else d.ONFAILURE.replace("%n", unit)
        if have != want:
            wrong.append(f"{unit}: OnFailure={have!r} (want {want!r})")
    hook = _show(target, d.HOOK_TEMPLATE.replace("@.", "@x.service."), "OnFailure").get("OnFailure", "")
    if hook:
        wrong.append(f"the hook itself would alert about itself: OnFailure={hook!r}")
    assert not wrong, "; ".join(wrong)


@pytest.mark.control("hk-alert-04")
def test_webhook_key_only_as_encrypted_credential(target):
    """The webhook's HMAC key exists only as a root-only systemd-creds ciphertext loaded by the notifier's unit"""
    unit_text = target.check_output(f"systemctl cat {d.UNIT}")
    assert "Environment" not in unit_text, "the notifier's unit sets an environment"
    present = target.run(f"test -e {KEY_FILE}").rc == 0
    if not d.WEBHOOK_URL.value(target.data):
        assert not present and "LoadCredentialEncrypted" not in unit_text, "a key without a webhook"
        return
    assert f"LoadCredentialEncrypted={KEY_CREDENTIAL}:{KEY_FILE}" in unit_text
    user, group, mode = os_state.stats(target, [KEY_FILE])[KEY_FILE]
    assert (user, group, mode & 0o077) == ("root", "root", 0), f"{KEY_FILE}: {user}:{group} {oct(mode)}"
    head = target.check_output(f"head -c 48 {KEY_FILE}").strip()
    # systemd-creds writes base64 of a binary header (the sealing key's id, then little-endian sizes)
    try:
        header = base64.b64decode(head, validate=True)
    except ValueError:
        header = b""
    assert len(header) == 36 and b"\0\0" in header[16:], f"{KEY_FILE} does not start like a systemd-creds ciphertext"


@pytest.mark.control("hk-alert-05")
def test_notifier_egress_only_to_the_webhook(target):
    """The notifier's uid is judged by its own table: it may reach only DNS and the webhook's host:port"""
    out = nft_state.rules(target, "output", d.EGRESS_TABLE)
    uid = int(target.check_output(f"id -u {d.ALERT_USER}").strip())
    skuid = {"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": uid}}
    assert out == [[skuid, {"jump": {"target": d.EGRESS_CHAIN}}]], out
    chain = nft_state.rules(target, d.EGRESS_CHAIN, d.EGRESS_TABLE)
    assert chain and chain[-1] == [{"counter": d.EGRESS_COUNTER}, {"drop": None}], chain[-1:]
    url = d.WEBHOOK_URL.value(target.data)
    objs = [o for o in nft_state.ruleset(target) if o.get("set", {}).get("table") == d.EGRESS_TABLE]
    sets = loaded_elements({"nftables": objs})
    assert sets is not None, f"the sets of inet {d.EGRESS_TABLE} are not loaded"
    elements = set().union(*(sets[name] for name in EXCHANGE_SETS.values()))
    if url:
        port = d.webhook_endpoint(url).rpartition(":")[2]
        assert elements and all(e.endswith(f" . {port}") for e in elements), \
            f"the allow-list holds {elements}, not the webhook's port {port}"
    else:
        assert not elements, f"no webhook, yet the notifier may reach {elements}"


@pytest.mark.control("hk-alert-06")
def test_fail2ban_jails_report_bans(target):
    """Each of hardkit's fail2ban jails runs the alert action beside its ban action"""
    for jail in JAILS:
        actions = target.check_output(f"fail2ban-client get {jail} actions")
        assert "hardkit-alert" in actions, f"jail {jail}: {actions.strip()}"
