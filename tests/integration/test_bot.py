"""The bot on a lab VPS: one deploy installs and starts it; it is idempotent, verifiable, operable
from the controller (halt that never lies), upgradable and rollable back with its ledger intact,
and it comes back after a reboot in the state it was left in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from roles import bot_release
from roles.bot import wait_for_bot_command
from roles.bot_paths import INSTALL_ROOT, UNIT
from tests.integration import oslab
from tests.integration.labkit import REPO_ROOT, boot, eager_bot, hardkit

pytestmark = pytest.mark.lab
PREFIX = "botlab"


@pytest.fixture(scope="module")
def lab():
    lab = boot(PREFIX)
    try:
        first = lab.deploy()
        assert first.ok, {n: (h.failed, h.error) for n, h in first.hosts.items()}
        yield lab
    finally:
        lab.down()


def bot(lab, verb: str, *args: str) -> subprocess.CompletedProcess:
    return hardkit("bot", verb, str(lab.inventory_path), *args, timeout=600)


def status(lab) -> dict:
    res = bot(lab, "status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)[lab.names[0]]["status"]


def links(lab) -> tuple[str, str]:
    out = oslab.root(lab, lab.names[0], f"readlink {INSTALL_ROOT}/current; readlink {INSTALL_ROOT}/previous || true")
    parts = out.stdout.split() + ["", ""]
    return parts[0].rsplit("/", 1)[-1], parts[1].rsplit("/", 1)[-1]


def test_deploy_runs_the_bot_and_a_redeploy_changes_nothing(lab):
    st = status(lab)
    assert st["state"] == "ACTIVE" and st["running"], st
    assert links(lab)[0] == bot_release.name()
    again = lab.deploy()
    assert again.ok
    assert again.raw["results"]["totals"]["success"] == 0, {n: h.changed for n, h in again.hosts.items()}


def test_verify_proves_the_bot_controls(lab, tmp_path):
    res = lab.verify("--report-dir", str(tmp_path), "-k", "bot")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]
    report = json.loads((tmp_path / "compliance.json").read_text())
    ids = {r["control"] for r in report["controls"] if r["status"] == "PASS"}
    assert {f"hk-bot-0{i}" for i in range(1, 9)} <= ids, sorted(ids)


def test_halt_is_confirmed_and_a_wedged_bot_is_still_halted(lab):
    res = bot(lab, "halt", "--reason", "integration halt")
    assert res.returncode == 0 and "confirmed by the running bot" in res.stdout, res.stdout + res.stderr
    assert status(lab)["state"] == "HALTED"
    res = bot(lab, "reset", "--note", "integration reset")
    assert res.returncode == 0 and status(lab)["state"] == "ACTIVE", res.stdout + res.stderr
    # A bot that accepts no command (stopped process): the halt must still be true, never assumed.
    oslab.root(lab, lab.names[0], f"kill -STOP $(systemctl show -p MainPID --value {UNIT})")
    res = bot(lab, "halt", "--reason", "wedged bot")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "did not answer" in res.stdout, res.stdout
    st = status(lab)
    assert st["state"] == "HALTED" and "wedged bot" in st["reason"], st


def test_upgrade_and_rollback_keep_the_ledger(lab, tmp_path):
    before = status(lab)
    assert before["state"] == "HALTED"
    first = links(lab)[0]
    source = tmp_path / "bot"
    shutil.copytree(REPO_ROOT / "bot", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    init = source / "src" / "hardkit_bot" / "__init__.py"
    init.write_text(init.read_text() + "\n# a new release for the upgrade test\n")
    env = dict(os.environ, HARDKIT_BOT_SOURCE=str(source))
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(lab.inventory_path)], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    upgraded, previous = links(lab)
    assert upgraded != first and previous == first, (upgraded, previous)
    after = status(lab)
    assert after["state"] == "HALTED" and after["reason"] == before["reason"] and after["pid"] != before["pid"]
    res = bot(lab, "rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert links(lab) == (first, upgraded)
    back = status(lab)
    assert back["state"] == "HALTED" and back["reason"] == before["reason"], back


def test_a_release_that_does_not_start_is_rolled_back(lab, tmp_path):
    """A new release whose bot never answers: the deploy goes back to the release that ran, fails, and says so."""
    before = status(lab)
    running = links(lab)[0]
    source = tmp_path / "bot"
    shutil.copytree(REPO_ROOT / "bot", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    init = source / "src" / "hardkit_bot" / "__init__.py"
    init.write_text(init.read_text() + "\nimport sys as _sys\nif _sys.argv[1:2] == ['run']:\n"
                    "    raise SystemExit('a release broken on purpose (rollback test)')\n")
    env = dict(os.environ, HARDKIT_BOT_SOURCE=str(source))
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(lab.inventory_path)], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode != 0, res.stderr[-3000:]
    assert f"rolled back: the bot runs release {running} again" in res.stderr, res.stderr[-3000:]
    current, previous = links(lab)
    assert current == running and previous not in ("", running), (current, previous)
    after = status(lab)
    assert after["pid"] != before["pid"] and (after["state"], after["reason"]) == (before["state"], before["reason"])
    again = lab.deploy()  # the repository's own release is the one running: nothing to switch
    assert again.ok and links(lab)[0] == running


def test_reboot_brings_the_bot_back_halted(lab):
    before = status(lab)
    assert before["state"] == "HALTED"
    oslab.reboot(lab, lab.names[0])
    res = oslab.root(lab, lab.names[0], wait_for_bot_command())
    assert res.returncode == 0, res.stderr
    after = status(lab)
    assert after["state"] == "HALTED" and after["reason"] == before["reason"], after
    res = bot(lab, "reset", "--note", "after reboot")
    assert res.returncode == 0 and status(lab)["state"] == "ACTIVE"


def test_dashboard_through_ssh_in_chromium_and_nowhere_else(lab, tmp_path):
    """The dashboard reaches the controller's browser through SSH only, and follows a halt live."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests import browser

    if not browser.available():
        pytest.skip(browser.MISSING)
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "bot", "dashboard", str(lab.inventory_path),
                             "--host", lab.names[0]], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "dashboard at http://127.0.0.1:" in line, line
        url = line.split("dashboard at ", 1)[1].split()[0]
        with browser.chromium(tmp_path) as page:
            page.get(url)
            wait = WebDriverWait(page, 60)
            wait.until(lambda d: d.find_element(By.ID, "state").text == "ACTIVE")
            limits = page.find_elements(By.CSS_SELECTOR, "#limits tr[data-limit]")
            assert {r.get_attribute("data-limit") for r in limits} >= {
                "daily_loss_pct", "drawdown_pct", "consecutive_losses", "total_exposure"}
            assert bot(lab, "halt", "--reason", "seen in the browser").returncode == 0
            wait.until(lambda d: d.find_element(By.ID, "state").text == "HALTED")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert bot(lab, "reset", "--note", "after the dashboard test").returncode == 0
    # What `ssh -L` would need is refused by the hardened sshd: the exec channel is the only way in.
    import paramiko

    from deploy import connect
    host = lab.inventory.hosts[0]
    login = connect.resolve(host)
    client = connect.open_client(host, login.user, port=login.port)
    try:
        with pytest.raises(paramiko.ChannelException):
            client.get_transport().open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0), timeout=20)
    finally:
        client.close()
    # Neither lab client reaches anything of the bot: only sshd listens, and only sshd answers.
    address = lab.lab_address(lab.names[0])
    for role in ("allowed", "attacker"):
        for port in (80, 443, 8080, 9464, 8787):
            probe = lab.from_client(role, ["timeout", "4", sys.executable, "-c",
                                           "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)",
                                           address, str(port)])
            assert probe.returncode != 0, f"{role} client reached {address}:{port}"


def test_needrestart_never_restarts_the_bot_holding_a_position(lab, tmp_path):
    """A library the bot has mapped is replaced (as a security update would) while the bot holds a
    position: needrestart restarts another affected service (fail2ban) but not the bot."""
    from roles.updates import INHIBIT_DIR

    variant = lab.variant(tmp_path / "inventory.py", bot=eager_bot())  # a position comes within seconds
    assert lab.deploy(inventory_path=variant).ok
    # One script, so the position is seen (through the bot's reboot inhibitor: it exists while the bot
    # is exposed, and proves the sandboxed bot can write it) right before needrestart acts. The eager
    # strategy closes positions within seconds, so the script waits for one (up to 300 s) on the host
    # itself rather than trusting a status read taken a round-trip earlier.
    script = (f"pid=$(systemctl show -p MainPID --value {UNIT}); "
              "lib=$(grep -o '/usr/lib/x86_64-linux-gnu/libsqlite3[^ ]*' /proc/$pid/maps | head -1); "
              'cp -p "$lib" "$lib.new" && mv "$lib.new" "$lib"; '
              "f2b=$(systemctl show -p MainPID --value fail2ban); "
              "holder=; for i in $(seq 1500); do "
              f"holder=$(cat {INHIBIT_DIR}/hardkit-bot 2>/dev/null) && [ -n \"$holder\" ] && break; "
              "sleep 0.2; done; "
              "needrestart -r a </dev/null >/dev/null 2>&1; "
              f"echo $pid $(systemctl show -p MainPID --value {UNIT}) $f2b $(systemctl show -p MainPID --value fail2ban); "
              'echo "$holder"')
    res = oslab.root(lab, lab.names[0], script, timeout=600)
    pids, holder = res.stdout.splitlines()[0].split(), res.stdout.splitlines()[1]
    bot_before, bot_after, f2b_before, f2b_after = pids
    assert holder, "the bot held no position (no reboot inhibitor) within 300 s"
    assert json.loads(holder)["holder"] == "hardkit-bot", f"no position held when needrestart ran: {holder!r}"
    assert f2b_before != f2b_after, "needrestart restarted nothing: the check proves nothing"
    assert bot_before == bot_after, f"needrestart restarted the bot holding a position: {res.stdout}"
    assert lab.deploy().ok  # back to the inventory's own config


def test_live_bot_authenticates_with_delivered_credentials_through_its_egress(lab, tmp_path):
    """Live mode on the lab VPS: the exchange's key and secret go from an age-encrypted secrets
    environment to systemd-creds on the host, the bot signs its requests with them, and reaches the
    (lab-local HTTPS) exchange only because it is in its egress allow-list."""
    key, secret = f"lab-key-{os.urandom(6).hex()}", f"lab-secret-{os.urandom(12).hex()}"
    env = dict(os.environ, HARDKIT_SECRETS_DIR=str(tmp_path / "secrets"),
               HARDKIT_AGE_IDENTITY=str(tmp_path / "age-identity.txt"))

    def cli(*args, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=REPO_ROOT, env=env, input=stdin,
                              capture_output=True, text=True, timeout=900)

    assert cli("secrets", "init", "live").returncode == 0
    for name, value in (("exchange-api-key", key), ("exchange-api-secret", secret)):
        assert cli("secrets", "set", "live", name, stdin=value + "\n").returncode == 0
    client = lab.host_data(lab.names[0])["lab"]["clients"]["allowed"]
    address, ns = client["v4"], client["netns"]
    folder = tmp_path / "exchange"
    folder.mkdir()
    venue = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.lab_exchange",
                              address, "443", str(folder)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        venue.stdin.write(f"{key}\n{secret}\n")
        venue.stdin.close()
        ca = json.loads(venue.stdout.readline())["ca"]
        from roles.bot_config import paper_default

        live = paper_default()
        live["exchange"] = {"kind": "ccxt", "id": "binance", "sandbox": True, "timeframe": "1m",
                            "api_url": f"https://{address}", "ca_bundle": ca}
        variant = lab.variant(tmp_path / "inventory.py", bot=live, secrets_env="live",
                              bot_egress_endpoints=[f"{address}:443"])
        res = cli("deploy", str(variant))
        assert res.returncode == 0, res.stderr[-3000:]
        res = cli("bot", "status", str(variant), "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        auth = json.loads((folder / "auth.json").read_text())
        assert auth["ok"] > 0 and auth["refused"] == 0, auth
        assert key not in res.stdout and secret not in res.stdout
        logs = cli("bot", "logs", str(variant), "-n", "200")
        assert key not in logs.stdout and secret not in logs.stdout
    finally:
        venue.terminate()
        venue.wait(timeout=30)
    assert lab.deploy().ok  # the inventory's own paper bot again; the delivered credentials are removed
    gone = oslab.root(lab, lab.names[0], "ls /etc/credstore.encrypted")
    assert "exchange-api" not in gone.stdout, gone.stdout


def test_bot_enabled_false_stops_the_installed_bot_and_keeps_its_ledger(lab, tmp_path):
    """Turning the bot off in the inventory stops it for real (not only "not installed next time"), and
    turning it on again brings back the same ledger state."""
    res = bot(lab, "halt", "--reason", "before turning the bot off")
    assert res.returncode == 0, res.stdout + res.stderr
    # The latch's reason is the first one: an earlier test's eager strategy may have tripped a breaker
    # before this halt, and a halt does not overwrite a halt.
    before = status(lab)
    assert before["state"] == "HALTED", before
    off = lab.variant(tmp_path / "inventory.py", bot_enabled=False)
    res = hardkit("deploy", str(off))
    assert res.returncode == 0, res.stderr[-3000:]
    state = oslab.root(lab, lab.names[0], f"systemctl is-active {UNIT}; systemctl is-enabled {UNIT}; "
                                          f"pgrep -u hardkit-bot | wc -l").stdout.split()
    assert state == ["inactive", "disabled", "0"], state
    report = tmp_path / "report"
    res = hardkit("verify", str(off), "--report-dir", str(report), "-k", "bot")
    assert res.returncode == 0, res.stdout[-3000:]
    rows = {r["control"]: r["status"] for r in json.loads((report / "compliance.json").read_text())["controls"]}
    assert rows["hk-bot-10"] == "PASS" and rows["hk-bot-01"] == "SKIP", rows
    assert lab.deploy().ok
    back = status(lab)
    assert back["running"] and back["state"] == "HALTED" and back["reason"] == before["reason"], (before, back)
    assert bot(lab, "reset", "--note", "turned on again").returncode == 0
