"""The fast no-op redeploy is honest: with every fact answered by the one-round-trip batch
(deploy/fact_batch.py), drift made by hand between deploys is still seen and converged.

One nspawn target, four deploys: fresh, no-op (the batch in use, nothing changed), after three
kinds of drift (a managed file edited, a package removed, a unit disabled: each converged), and
no-op again.
"""

from __future__ import annotations

import json
import os

import pytest

from deploy import fact_batch
from roles.baseline import RELEASE_FILE
from roles.guard import BOOT_UNIT
from roles.time_logs import JOURNALD_FILE
from tests.integration.labkit import boot

pytestmark = pytest.mark.lab
PREFIX = "flnoop"
#: A package the updates role installs and nothing else needs (safe to remove by hand).
REMOVED_PACKAGE = "needrestart"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    handle = boot(PREFIX)
    for name in handle.names:
        fact_batch.cache_file(name).unlink(missing_ok=True)
    stats = tmp_path_factory.mktemp("facts") / "stats.json"
    os.environ["HARDKIT_FACT_STATS"] = str(stats)
    handle.fact_stats = lambda: json.loads(stats.read_text())
    first = handle.deploy()
    assert first.ok, {n: (h.failed, h.error) for n, h in first.hosts.items()}
    yield handle
    os.environ.pop("HARDKIT_FACT_STATS", None)
    handle.down()


def test_a_noop_redeploy_answers_its_facts_from_one_batch_and_changes_nothing(lab):
    again = lab.deploy()
    assert again.ok and again.changed_ops == 0, {n: h.changed for n, h in again.hosts.items()}
    stats = lab.fact_stats()[lab.names[0]]
    assert stats["batched"] > 100 and stats["live"] == 0, stats


def test_drift_by_hand_is_seen_and_converged(lab):
    name = lab.names[0]
    before = lab.ssh(name, f"sha256sum {RELEASE_FILE} {JOURNALD_FILE}").stdout
    drift = lab.ssh(name, f"echo 'edited by hand' | tee -a {RELEASE_FILE} >> {JOURNALD_FILE}; "
                          f"DEBIAN_FRONTEND=noninteractive apt-get remove -y -q {REMOVED_PACKAGE} "
                          f">/dev/null && systemctl disable --quiet {BOOT_UNIT} && echo drifted")
    assert drift.stdout.strip() == "drifted", drift.stderr

    fixed = lab.deploy()
    assert fixed.ok, fixed.hosts[name].failed
    assert lab.fact_stats()[name]["from_batch"] > 0  # the drift was seen through the batch
    changed = " / ".join(fixed.hosts[name].changed)
    for what in ("release marker", "journald", "unattended-upgrades, needrestart", "boot-time revert"):
        assert what in changed, f"{what!r} not reconverged; changed: {changed}"
    state = lab.ssh(name, f"sha256sum {RELEASE_FILE} {JOURNALD_FILE}; dpkg -s {REMOVED_PACKAGE} | grep -c "
                          f"'install ok installed'; systemctl is-enabled {BOOT_UNIT}")
    assert state.stdout.startswith(before) and state.stdout.split()[-2:] == ["1", "enabled"], state.stdout

    settled = lab.deploy()
    assert settled.ok and settled.changed_ops == 0, settled.hosts[name].changed
