"""The disaster-recovery drill, timed: RTO and RPO of `hardkit restore` on the lab.

Three nspawn targets (prefix benchdr): a VPS with the bot backing up to a backup server, and a pristine
third target. The VPS is deployed and backed up, then powered off at a measured time after its last
backup; `hardkit restore` brings its bot up on the third target. Prints:
  - RTO: from `hardkit restore` starting on the pristine target to the bot running on the restored
    ledger (reconciled, answering on its socket), with each step's time;
  - RPO: the schedule's worst case (backup_interval_minutes plus one backup's run time) and the measured
    one (time from the last backup's end to the loss in this drill).
Figures from one run on a shared, noisy machine: compare within a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roles import backup_data  # noqa: E402
from tests.integration import test_backup as drill  # noqa: E402
from tests.integration.labkit import REPO_ROOT, boot, hardkit  # noqa: E402

PREFIX = "benchdr"
#: Seconds between the last backup's end and the loss in this drill (a realistic moment mid-interval).
LOSS_AFTER_S = 20


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="hardkit-dr-"))
    os.environ.update(HARDKIT_SECRETS_DIR=str(tmp / "secrets"), HARDKIT_AGE_IDENTITY=str(tmp / "id.txt"))
    lab = boot(PREFIX, count=3)
    try:
        assert hardkit("secrets", "init", drill.ENV).returncode == 0
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "bk")], check=True)
        drill._set_secret(backup_data.RESTIC_PASSWORD, os.urandom(24).hex().encode())
        drill._set_secret(backup_data.BACKUP_SSH_KEY, (tmp / "bk").read_bytes())
        lab.inventory_path = drill.backup_inventory(lab, tmp / "inventory.py", (tmp / "bk.pub").read_text().strip())
        vps, server, new = lab.names
        runs = [subprocess.Popen([sys.executable, "-m", "deploy.cli", "deploy", str(lab.inventory_path), "--limit",
                                  n], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                for n in (vps, server)]
        if any(r.wait(timeout=1800) for r in runs):
            print("deploy failed", file=sys.stderr)
            return 1
        t = time.monotonic()
        res = lab.ssh(vps, f"systemctl start {backup_data.BACKUP_UNIT}", timeout=900)
        if res.returncode != 0:
            print(f"backup failed: {res.stderr}", file=sys.stderr)
            return 1
        backup_s = time.monotonic() - t
        time.sleep(LOSS_AFTER_S)
        lost_after = time.monotonic() - t - backup_s
        try:
            lab.ssh(vps, "systemctl poweroff", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        t = time.monotonic()
        res = hardkit("restore", str(lab.inventory_path), "--host", new, "--from", server, timeout=3600)
        rto = time.monotonic() - t
        if res.returncode != 0:
            print(f"restore failed: {res.stderr[-2000:]}", file=sys.stderr)
            return 1
        doc = json.loads(res.stdout)
        interval = backup_data.BACKUP_INTERVAL.value(lab.host_data(vps)) * 60
        print(f"RTO (pristine target -> restored bot running): {rto:.1f} s")
        for name, at in doc["timings_s"].items():
            print(f"  {at:7.1f} s  {name}")
        print(f"  bot after restore: {doc['state']} ({doc['reason']})")
        print(f"RPO worst case (interval {interval} s + one backup run {backup_s:.1f} s): {interval + backup_s:.0f} s")
        print(f"RPO measured in this drill (last backup end -> loss): {lost_after:.1f} s")
        print(f"ratio RTO / one backup run: {rto / backup_s:.1f}")
        return 0
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
