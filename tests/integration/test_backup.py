"""Encrypted backups on real lab targets: a VPS with the bot backs up to a backup server deployed by the kit.

One lab (prefix bkp), both hosts deployed in one run: bkp-1 the VPS (bot, paper exchange),
bkp-2 the backup server (no bot). Its secrets (repository password, backup SSH key) live in a secrets
environment of this module's own and reach the VPS as encrypted credentials.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from hardkit_bot.config import parse
from hardkit_bot.store import LOSS_STREAK

from deploy import restore as restore_mod
from roles import backup as role
from roles import backup_data
from roles.auditors_data import UNIT_MAX_EXPOSURE
from roles.bot_config import config_for, to_toml
from sandbox.lab_inventory import known_hosts_path
from tests.integration.labkit import REPO_ROOT, boot, eager_bot, hardkit

pytestmark = pytest.mark.lab
PREFIX = "bkp"
ENV = "bkp"


def _set_secret(name: str, value: bytes) -> None:
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "secrets", "set", ENV, name], cwd=REPO_ROOT,
                         input=value, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr


def _server_host_keys(lab, server: str) -> list[str]:
    port = lab.host_data(server)["ssh_forwarded_ports"][22]
    lines = known_hosts_path(lab.prefix).read_text().splitlines()
    return [" ".join(line.split()[1:3]) for line in lines if line.startswith(f"[127.0.0.1]:{port} ")]


def backup_inventory(lab, path: Path, key_pub: str, bot: dict | None = None) -> Path:
    """The lab's inventory with bkp-1 backed up to bkp-2 over the lab's network; `bot`, when given, is the
    bot config of the VPS and of its replacement (the inventory's own otherwise)."""
    vps, server, new = lab.names
    same_bot = f", bot={bot!r}" if bot is not None else ""
    vps_v4, server_v4, new_v4 = lab.lab_address(vps), lab.lab_address(server), lab.lab_address(new)
    clients = [f"{vps_v4}/32", f"{new_v4}/32"]
    allow = lab.host_data(server)["ssh_allow_from"] + clients
    target = {"address": server_v4, "host_keys": _server_host_keys(lab, server)}
    path.write_text(lab.inventory_path.read_text() + f"""
for _name, _d in sandbox:
    if _name == {vps!r}:
        _d.update(secrets_env={ENV!r}, backup_interval_minutes=5, backup_to={target!r}{same_bot})
    elif _name == {new!r}:   # the replacement: it takes over the lost host's repository
        _d.update(secrets_env={ENV!r}, backup_interval_minutes=5, backup_to={{**{target!r}, "repository": {vps!r}}}{same_bot})
    elif _name == {server!r}:
        _d.update(bot_enabled=False, backup_server=True, ssh_allow_from={allow!r},
                  backup_server_clients={clients!r}, backup_server_keys=[{key_pub!r}])
""")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backup")
    saved = {k: os.environ.get(k) for k in ("HARDKIT_SECRETS_DIR", "HARDKIT_AGE_IDENTITY")}
    os.environ.update(HARDKIT_SECRETS_DIR=str(tmp / "secrets"), HARDKIT_AGE_IDENTITY=str(tmp / "id.txt"))
    lab = boot(PREFIX, count=3)
    try:
        assert hardkit("secrets", "init", ENV).returncode == 0
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bkp", "-f", str(tmp / "bk")], check=True)
        _set_secret(backup_data.RESTIC_PASSWORD, os.urandom(24).hex().encode())
        _set_secret(backup_data.BACKUP_SSH_KEY, (tmp / "bk").read_bytes())
        # The VPS trades often (eager_bot) so that its drill has a position and a loss streak to carry over.
        lab.inventory_path = backup_inventory(lab, tmp / "inventory.py", (tmp / "bk.pub").read_text().strip(),
                                              bot=eager_bot())
        # Both hosts in one run, though their roles differ (a VPS, a backup server): pyinfra's own operation
        # order collided across role modules there ("Cycle detected"), deploy/op_order.py ranks files.
        lab.deployed_path = tmp / "deployed.py"   # the two deployed hosts (the third is the restore's target)
        lab.deployed_path.write_text(lab.inventory_path.read_text() +
                                     f"\nsandbox = [h for h in sandbox if h[0] != {lab.names[2]!r}]\n")
        res = hardkit("deploy", str(lab.deployed_path), timeout=1800)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        yield lab
    finally:
        lab.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def vps_root(lab, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return lab.ssh(lab.names[0], command, timeout=timeout)


def unit_result(lab, unit: str) -> dict:
    out = vps_root(lab, f"systemctl show -p Result -p ExecMainStatus -p ActiveState {unit}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def snapshots(lab, name: str | None = None, none_yet_ok: bool = False) -> list[dict]:
    """The repository's snapshots as `name` (the VPS by default) lists them; [] with `none_yet_ok` when the
    repository does not exist yet (a host's first backup creates it)."""
    name = name or lab.names[0]
    res = lab.ssh(name, role.credentialed_command(lab.host_data(name), "snapshots"), timeout=300)
    if none_yet_ok and res.returncode != 0 and "Is there a repository at the following location" in res.stderr:
        return []
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@contextmanager
def timer_paused(lab):
    """The VPS's backup timer stopped (and a run it started finished) for a test that counts snapshots: only
    the test's own runs add any meanwhile. Started again after."""
    assert vps_root(lab, f"systemctl stop {backup_data.BACKUP_TIMER}; "
                         f"while [ \"$(systemctl show -P ActiveState {backup_data.BACKUP_UNIT})\" = activating ]; "
                         "do sleep 1; done", timeout=900).returncode == 0
    try:
        yield
    finally:
        vps_root(lab, f"systemctl start {backup_data.BACKUP_TIMER}")


def test_scheduled_backup_lands_in_the_repository_and_checks_clean(lab):
    timer = vps_root(lab, f"systemctl show -p Unit -p ActiveState -p NextElapseUSecMonotonic {backup_data.BACKUP_TIMER}")
    assert f"Unit={backup_data.BACKUP_UNIT}" in timer.stdout and "ActiveState=active" in timer.stdout, timer.stdout
    # What the timer starts, started now (its first run is 5 min after the deploy started the timer; on a slow
    # deploy it may have run already: the repository may hold its snapshot, this run adds one).
    with timer_paused(lab):
        before = {s["id"] for s in snapshots(lab, none_yet_ok=True)}
        res = vps_root(lab, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=600)
        assert res.returncode == 0, vps_root(lab, f"journalctl -u {backup_data.BACKUP_UNIT} -n 30 --no-pager").stdout
        assert unit_result(lab, backup_data.BACKUP_UNIT)["Result"] == "success"
        snaps = [s for s in snapshots(lab) if s["id"] not in before]
    # The run's snapshot, taken as the VPS (the host a restore looks for), holds the bot's config and record.
    assert len(snaps) == 1 and "hardkit" in snaps[0]["tags"] and snaps[0]["hostname"] == lab.names[0], snaps
    assert {"/etc/hardkit-bot", "/var/lib/hardkit"} <= set(snaps[0]["paths"]), snaps[0]["paths"]
    # The ledger was staged by its own unit (the bot's user, offline), whose copy left with it once the backup
    # was done; the units score what ext-units-01 allows every hardkit unit.
    staged = vps_root(lab, f"journalctl -u {backup_data.STAGE_UNIT} -o cat --no-pager; "
                           f"systemctl show -p ActiveState -p Result {backup_data.STAGE_UNIT}; "
                           f"test -e {backup_data.LEDGER_STAGE_DIR} && echo staged-copy-left").stdout
    assert '"ledger": "' in staged and "ActiveState=inactive" in staged and "Result=success" in staged, staged
    assert "staged-copy-left" not in staged, staged
    scores = {}
    for unit in role.EXPOSURE_MAX:
        out = vps_root(lab, f"systemd-analyze security --no-pager {unit} | tail -n 1").stdout
        scores[unit] = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    print("exposure on the VPS:", scores)
    assert all(v <= UNIT_MAX_EXPOSURE.default for v in scores.values()), scores
    res = vps_root(lab, f"systemctl start {backup_data.CHECK_UNIT}", timeout=600)
    assert res.returncode == 0 and unit_result(lab, backup_data.CHECK_UNIT)["Result"] == "success"
    # The server holds ciphertext only: no SQLite header, no bot config in clear in the repository.
    server = lab.names[1]
    grep = lab.ssh(server, f"grep -rlF -e 'SQLite format 3' -e 'instance_id' {backup_data.CHROOT}{backup_data.REPOS} "
                           "| head -3; echo end")
    assert grep.stdout.strip() == "end", grep.stdout


def test_verify_proves_the_backup_controls(lab, tmp_path):
    res = hardkit("verify", str(lab.deployed_path), "--report-dir", str(tmp_path), "-k", "backup")
    report = json.loads((tmp_path / "compliance.json").read_text())
    passed = {r["control"] for r in report["controls"] if r["status"] == "PASS"}
    assert {"hk-bak-01", "hk-bak-02", "hk-bak-03", "hk-bak-04", "hk-bak-05"} <= passed, res.stdout[-3000:] + res.stderr[-800:]


def test_backup_account_is_sftp_only_and_only_from_the_vps(lab):
    server_v4 = lab.lab_address(lab.names[1])
    # The VPS's key from the allowed client (a listed ssh_allow_from address, not a backup client): refused.
    key = str(Path(os.environ["HARDKIT_SECRETS_DIR"]).parent / "bk")
    res = lab.client_ssh("allowed", backup_data.ACCOUNT, server_v4, key=key, command="id")
    assert res.returncode != 0 and "uid=" not in res.stdout, res.stdout + res.stderr
    # From the VPS itself: sftp works, a shell command does not run.
    res = vps_root(lab, f"{role.credentialed_command(lab.host_data(lab.names[0]), 'snapshots')} >/dev/null && "
                        f"echo sftp-ok")
    assert "sftp-ok" in res.stdout


def test_a_failed_backup_fails_its_unit_and_says_why(lab):
    server_v4 = lab.lab_address(lab.names[1])
    with timer_paused(lab):
        _failed_backup_says_why(lab, server_v4)


def _failed_backup_says_why(lab, server_v4: str) -> None:
    before = len(snapshots(lab))
    block = f"nft add table inet bkptest; nft add chain inet bkptest out '{{ type filter hook output priority -10; }}'; " \
            f"nft add rule inet bkptest out ip daddr {server_v4} drop"
    assert vps_root(lab, block).returncode == 0
    try:
        res = vps_root(lab, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=600)
        assert res.returncode != 0
        result = unit_result(lab, backup_data.BACKUP_UNIT)
        assert result["Result"] == "exit-code" and result["ExecMainStatus"] == "1", result
        journal = vps_root(lab, f"journalctl -u {backup_data.BACKUP_UNIT} -n 20 --no-pager -o cat").stdout
        assert "hardkit-backup: repository check failed" in journal, journal
    finally:
        vps_root(lab, "nft delete table inet bkptest")
    assert vps_root(lab, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=600).returncode == 0
    assert len(snapshots(lab)) == before + 1


def test_a_failed_staging_fails_its_unit_and_no_backup_runs(lab):
    """The stage unit failing (here: its command replaced by one that fails, in a runtime drop-in) fails that
    unit, which alerts like the backup's; the backup that requires it does not run, so no snapshot is added."""
    with timer_paused(lab):
        _failed_staging_runs_no_backup(lab)


def _failed_staging_runs_no_backup(lab) -> None:
    before = len(snapshots(lab))
    dropin = f"/run/systemd/system/{backup_data.STAGE_UNIT}.d"
    assert vps_root(lab, f"mkdir -p {dropin} && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' "
                         f"> {dropin}/fail.conf && systemctl daemon-reload").returncode == 0
    try:
        res = vps_root(lab, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=600)
        assert res.returncode != 0 and "dependency" in res.stderr, res.stdout + res.stderr
        stage = unit_result(lab, backup_data.STAGE_UNIT)
        assert stage["ActiveState"] == "failed" and stage["Result"] == "exit-code", stage
    finally:
        vps_root(lab, f"rm -rf {dropin}; systemctl daemon-reload; systemctl reset-failed {backup_data.STAGE_UNIT}")
    assert len(snapshots(lab)) == before
    assert vps_root(lab, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=600).returncode == 0
    assert len(snapshots(lab)) == before + 1


def _audit_verify(lab, name: str) -> str:
    """`hardkit-bot audit verify` on a host, with its audit key as the bot gets it (a credential)."""
    line = (f"systemd-run --quiet --wait --pipe --collect -p LoadCredentialEncrypted=audit-key:"
            f"/etc/credstore.encrypted/hardkit-bot.audit-key -p User=hardkit-bot "
            f"/usr/local/bin/hardkit-bot audit verify --state-dir /var/lib/hardkit-bot")
    res = lab.ssh(name, line, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def not_dust(positions: dict[str, str], config: dict) -> dict[str, str]:
    """Positions as the bot's status shows them: the bot's own rule (Instrument.holds) drops dust."""
    instruments = {i.symbol: i for i in parse(to_toml(config)).instruments}
    return {s: q for s, q in positions.items() if s not in instruments or instruments[s].holds(Decimal(q))}


#: Seconds the drill waits for the VPS's bot to hold a position right after a losing round trip, backed up
#: so: each try lost to a stop filling while halted costs a new epoch (streak 0) and another loss (900 s ran
#: out on the shared machine at load 9).
EXPOSED_WAIT_S = 1800


def loss_streak(st: dict) -> int:
    """The losing round-trip streak as the bot's status shows it (its consecutive-loss limit's usage)."""
    return int(next((x["used"] for x in st.get("limits", []) if x["name"] == LOSS_STREAK), 0))


def test_restore_onto_a_new_host_keeps_ledger_chain_and_latch(lab):
    vps, server, new = lab.names
    inv = str(lab.inventory_path)
    status = lambda: json.loads(hardkit("bot", "status", inv, "--limit", vps,  # noqa: E731
                                        "--json").stdout)[vps]["status"]
    held = lambda st: {p["instrument"]: p["qty"] for p in st.get("positions", [])}  # noqa: E731
    # The lost VPS holds a position and a loss streak, latched by the operator's halt (HALTED keeps both) and
    # backed up so. The eager bot may close its position before the halt lands, or a stop may fill before the
    # snapshot: then a reset (a new epoch, streak 0) and the drill waits for another loss and position.
    deadline = time.monotonic() + EXPOSED_WAIT_S
    exposed = lambda st: bool(held(st)) and loss_streak(st) >= 1  # noqa: E731

    def reset(note: str) -> None:
        """A new risk epoch (and day: the eager bot's losses must not keep its daily-loss breaker tripped) for
        another round. The reset lands when the latch is the reset's; a condition that still holds may re-trip
        at once (the eager bot closing a position: volatility, a loss overrun; stale data on a loaded machine),
        which `hardkit bot reset` reports as not ACTIVE: the loop waits for ACTIVE again, or resets a latched
        REDUCING once more."""
        res = hardkit("bot", "reset", inv, "--limit", vps, "--new-day", "--note", note)
        if res.returncode != 0:
            after = status()
            latched = after.get("latched", {})
            took = "not reset (exit 0, state REDUCING)" in res.stdout + res.stderr
            assert took and after.get("state") == "REDUCING" and latched.get("state") != "HALTED", \
                (res.stdout + res.stderr, after)
            print("reset re-tripped at once:", after.get("reason"), "latched:", latched)

    last_reset, start, tries = 0.0, time.monotonic(), []
    while True:
        st = status()
        if st.get("state") == "ACTIVE" and exposed(st):
            res = hardkit("bot", "halt", inv, "--limit", vps, "--reason", "drill: latched before loss")
            assert res.returncode == 0, res.stdout + res.stderr
            before = status()
            if exposed(before):
                chain = _audit_verify(lab, vps)
                # The drill's own run, staged after the halt: a `systemctl start` during a run the timer
                # started joins that run, whose ledger copy may predate the halt (the landing's CI saw it).
                with timer_paused(lab):
                    assert vps_root(lab, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=600).returncode == 0
                backed_up = status()   # HALTED keeps positions and their stops: a stop may fill at any time
                if exposed(backed_up) and held(backed_up) == held(before):
                    break
            tries.append(f"{time.monotonic() - start:.0f} s: halted {held(before)} streak {loss_streak(before)}, "
                         f"then {held(backed_up) if exposed(before) else 'not exposed any more'}")
            print("drill try lost:", tries[-1])
            reset("drill: exposure closed before the backup")
            last_reset = time.monotonic()
        elif st.get("latched", {}).get("state") == "REDUCING" and time.monotonic() - last_reset > 30:
            reset("drill: a breaker of the eager bot latched REDUCING; the drill needs it trading")
            last_reset = time.monotonic()
        assert time.monotonic() < deadline, f"no position after a loss within {EXPOSED_WAIT_S} s: {st}; tries: {tries}"
        time.sleep(1)
    try:
        lab.ssh(vps, "systemctl poweroff", timeout=30)   # the VPS is lost
    except subprocess.TimeoutExpired:
        pass
    res = hardkit("restore", str(lab.inventory_path), "--host", new, "--from", server, timeout=2400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    print("restore timings:", doc["timings_s"], "snapshot:", doc["snapshot"])
    # The lost VPS's newest snapshot was restored, and the restore said which (the replacement's own timer did
    # not back its fresh ledger up into the repository first: that one would have been the newest).
    vps_snaps = [s for s in snapshots(lab, new) if s["hostname"] == vps]
    newest = max(vps_snaps, key=restore_mod.snapshot_time)
    assert doc["snapshot"]["host"] == vps and doc["snapshot"]["id"] == newest["short_id"], (doc["snapshot"], newest)
    assert f"restoring snapshot {newest['short_id']} of {vps}, taken " in res.stderr, res.stderr[-2000:]
    # The ledger as restored holds what the VPS held when the snapshot was taken (the same before and after it),
    # dust aside: status shows no position below an instrument's step or minimum size.
    restored = not_dust(doc["restored"]["positions"], config_for(lab.host_data(vps)))
    assert restored == held(before) == held(backed_up), (doc["restored"], before, backed_up)
    streak = doc["restored"]["loss_streak"]
    assert streak >= 1 and streak in (loss_streak(before), loss_streak(backed_up)), (doc["restored"], before, backed_up)
    print("positions held:", held(before), "restored:", doc["restored"]["positions"], "loss streak:", streak)
    # Running again, the bot reconciled with the exchange and kept the drill's latch: a mismatch would have
    # replaced the reason. A resting stop that filled during the outage is in the ledger now (the exchange
    # kept running), which is the only way the running positions may differ from the restored ones.
    assert doc["state"] == "HALTED" and doc["reason"] == before["reason"], doc
    print("positions after reconciliation:", held(doc), "loss streak:", loss_streak(doc))
    if held(doc) == restored:   # no stop filled while the VPS was down: the running bot's streak is the ledger's
        assert loss_streak(doc) == streak, doc
    assert "does not trade" in res.stderr
    # The same chain, verified with the restored key on the new host: every record kept (the restarted
    # bot may add its own after them).
    after = _audit_verify(lab, new)
    count = lambda text: int(re.search(r"audit log OK: (\d+) records", text).group(1))  # noqa: E731
    assert count(after) >= count(chain), (chain, after)
    # Restored, the replacement backs up into the repository it took over, as itself.
    res = lab.ssh(new, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=600)
    assert res.returncode == 0, lab.ssh(new, f"journalctl -u {backup_data.BACKUP_UNIT} -n 20 --no-pager -o cat").stdout
    assert any(s["hostname"] == new for s in snapshots(lab, new))
