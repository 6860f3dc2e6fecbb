"""The disaster-recovery drill, timed: RTO and RPO of `hardkit restore` on the lab.

Three nspawn targets (prefix benchdr): a VPS with the bot backing up to a backup server, and a pristine
third target. The VPS and the server are deployed (one run, as tests/integration/test_backup.py does),
the VPS is backed up with its bot ACTIVE (not halted), then powered off a measured time after that
backup; `hardkit restore` brings its bot up on the third target. By default both bots run a paper config
that trades often and the backup is taken once the VPS's bot holds a position (so reconciliation has
orders, fills and a position to compare); `--idle-bot` keeps the inventory's default bot config (which
may not have traded yet, leaving reconciliation nothing to disagree about). Prints:
  - RTO: from `hardkit restore` starting on the pristine target to the bot running on the restored
    ledger (reconciled, answering on its socket), with each step's time;
  - the restored bot's state, and whether trading resumed (reconciliation clean -> ACTIVE);
  - RPO: the schedule's worst case (backup_interval_minutes plus one backup's run time) and the measured
    one (from the newest snapshot's time, as restic recorded it, to the loss in this drill).
Figures from one run on a shared, noisy machine: compare within a run. The lab is taken down at the end,
whatever the outcome, and the drill's secrets folder (age identity, backup key) is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roles import backup as backup_role  # noqa: E402
from roles import backup_data  # noqa: E402
from sandbox import lab as sandbox_lab  # noqa: E402
from tests.integration import test_backup as drill  # noqa: E402
from tests.integration.labkit import boot, eager_bot, hardkit  # noqa: E402

PREFIX = "benchdr"
#: Seconds between the last backup's end and the loss in this drill (a realistic moment mid-interval).
LOSS_AFTER_S = 20
#: Seconds the VPS's bot may take to open its first position before the backup (the eager config
#: trades on the paper market within seconds to a few minutes).
POSITION_WAIT_S = 600


def _snapshot_time(text: str) -> float:
    """restic's snapshot time (RFC 3339, nanoseconds) as a Unix time."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).timestamp()


def _bot_status(lab, name: str) -> dict:
    """The bot's status on one host (`hardkit bot status --json`), {} when it cannot be read."""
    res = hardkit("bot", "status", str(lab.inventory_path), "--limit", name, "--json")
    try:
        return json.loads(res.stdout)[name]["status"] or {}
    except (ValueError, KeyError, TypeError):
        print(f"  ({name}: bot status unreadable: {(res.stdout + res.stderr).strip()[-300:]})", flush=True)
        return {}


def _describe(st: dict) -> str:
    """State, latch reason and since, what the bot holds and has open: enough to tell a restored ledger."""
    held = ", ".join(f"{p['instrument']} {p['qty']}" for p in st.get("positions", [])) or "none"
    return (f"{st.get('state')} (latch reason {st.get('reason')!r}, since {st.get('since')}); positions: {held}; "
            f"open orders: {len(st.get('open_orders', []))}")


def drill_run(tmp: Path, trading: bool) -> int:
    lab = boot(PREFIX, count=3)
    assert hardkit("secrets", "init", drill.ENV).returncode == 0
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", PREFIX, "-f", str(tmp / "bk")], check=True)
    drill._set_secret(backup_data.RESTIC_PASSWORD, os.urandom(24).hex().encode())
    drill._set_secret(backup_data.BACKUP_SSH_KEY, (tmp / "bk").read_bytes())
    # When trading, the VPS and its replacement run the same (eager) bot config.
    lab.inventory_path = drill.backup_inventory(lab, tmp / "inventory.py", (tmp / "bk.pub").read_text().strip(),
                                                bot=eager_bot() if trading else None)
    vps, server, new = lab.names
    # The VPS and its backup server in one run (the third target stays pristine for the restore).
    deployed = tmp / "deployed.py"
    deployed.write_text(lab.inventory_path.read_text() + f"\nsandbox = [h for h in sandbox if h[0] != {new!r}]\n")
    load = os.getloadavg()
    print(f"load at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
    t = time.monotonic()
    res = hardkit("deploy", str(deployed), timeout=2400)
    if res.returncode != 0:
        print(f"deploy failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}", file=sys.stderr)
        return 1
    print(f"deploy of the VPS and the backup server (one run): {time.monotonic() - t:.1f} s", flush=True)
    if trading:
        t = time.monotonic()
        while not _bot_status(lab, vps).get("positions"):
            if time.monotonic() - t > POSITION_WAIT_S:
                print(f"the VPS's bot opened no position within {POSITION_WAIT_S} s", file=sys.stderr)
                return 1
            time.sleep(2)
        print(f"VPS bot opened a position {time.monotonic() - t:.0f} s after the deploy", flush=True)
    print(f"VPS bot before the backup: {_describe(_bot_status(lab, vps))}", flush=True)
    t = time.monotonic()
    res = lab.ssh(vps, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=900)
    if res.returncode != 0:
        journal = lab.ssh(vps, f"journalctl -u {backup_data.BACKUP_UNIT} -n 30 --no-pager").stdout
        print(f"backup failed: {res.stderr}\n{journal}", file=sys.stderr)
        return 1
    backup_s = time.monotonic() - t
    time.sleep(LOSS_AFTER_S)
    res = lab.ssh(vps, backup_role.credentialed_command(lab.host_data(vps), "snapshots"), timeout=300)
    if res.returncode != 0:
        print(f"listing the snapshots failed: {res.stderr}", file=sys.stderr)
        return 1
    snaps = json.loads(res.stdout)
    newest = max(_snapshot_time(s["time"]) for s in snaps)
    at_loss = _bot_status(lab, vps)
    print(f"VPS bot at the loss: {_describe(at_loss)}; {len(snaps)} snapshot(s) in its repository "
          "(the timer's own runs too)", flush=True)
    lost_at = time.time()
    try:
        lab.ssh(vps, "systemctl poweroff", timeout=30)   # the VPS is lost
    except subprocess.TimeoutExpired:
        pass
    t = time.monotonic()
    res = hardkit("restore", str(lab.inventory_path), "--host", new, "--from", server, timeout=3600)
    rto = time.monotonic() - t
    if res.returncode != 0:
        print(f"restore failed after {rto:.1f} s:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}", file=sys.stderr)
        return 1
    doc = json.loads(res.stdout)
    interval = backup_data.BACKUP_INTERVAL.value(lab.host_data(vps)) * 60
    print(f"RTO (pristine target -> restored bot running): {rto:.1f} s")
    for name, at in doc["timings_s"].items():
        print(f"  {at:7.1f} s  {name}")
    resumed = doc["state"] == "ACTIVE"
    print(f"bot after restore: {doc['state']}" + (f" ({doc['reason']})" if doc.get("reason") else "")
          + (": reconciliation clean, trading resumed" if resumed else ": trading did NOT resume"))
    print("  restore said: " + " | ".join(line for line in res.stderr.strip().splitlines()[-1:]))
    print(f"  ledger put back: {json.dumps(doc['restored'])}")
    after = _bot_status(lab, new)
    print(f"  restored bot now: {_describe(after)}")
    same = after.get("since") is not None and after.get("since") == at_loss.get("since")
    print(f"  its latch dates from the lost VPS's ledger (since {at_loss.get('since')}): {'yes' if same else 'NO'}")
    print(f"RPO worst case (interval {interval} s + one backup run {backup_s:.1f} s): {interval + backup_s:.0f} s")
    print(f"RPO measured in this drill (newest snapshot's time -> loss): {lost_at - newest:.1f} s "
          f"(backup run {backup_s:.1f} s, then {LOSS_AFTER_S} s)")
    print(f"ratio RTO / one backup run: {rto / backup_s:.1f}")
    print(f"load at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} CPUs")
    return 0   # figures, not pass/fail (make bench): a bot kept halted is said above, with its reason


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="hardkit-dr-"))
    os.environ.update(HARDKIT_SECRETS_DIR=str(tmp / "secrets"), HARDKIT_AGE_IDENTITY=str(tmp / "id.txt"))
    try:
        return drill_run(tmp, trading="--idle-bot" not in sys.argv[1:])
    finally:
        sandbox_lab.down(PREFIX, log=lambda m: None)   # also when boot itself failed halfway
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
