"""The molecule scenario (molecule/default) runs end to end: `molecule test` boots the lab, deploys,
proves the second deploy changed nothing by pyinfra's own count, verifies, and removes the lab.

Runs where the molecule extra is installed (CI installs it: .ci/run sets HARDKIT_EXTRAS=molecule);
elsewhere it is skipped, saying how to install it. One lab (PREFIX), two deploys.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import lab
from tests.integration.labkit import REPO_ROOT

pytestmark = pytest.mark.lab
PREFIX = "mol"
VENV_BIN = Path(sys.executable).parent
MOLECULE = VENV_BIN / "molecule"
#: What converge.yml prints for each host: the number of operations pyinfra changed.
CHANGED = re.compile(r"([\w.-]+): (\d+) operation\(s\) changed by pyinfra")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def molecule_run():
    if not MOLECULE.exists():
        pytest.skip("the molecule extra is not installed in this venv (HARDKIT_EXTRAS=molecule make setup, "
                    "or pip install -r requirements/molecule.lock)")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "HARDKIT_MOLECULE_LAB": PREFIX,
           "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}
    try:
        # stdin from /dev/null: a pytest-xdist worker's stdin is a non-blocking pipe, which Ansible refuses.
        res = subprocess.run([str(MOLECULE), "test"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL,
                             timeout=1800)
    finally:
        left = lab.down(PREFIX, log=lambda m: None)  # whatever happened, no lab stays behind
    return res, ANSI.sub("", res.stdout + res.stderr), left


def test_molecule_test_passes_every_step(molecule_run):
    res, out, _ = molecule_run
    why = [line[:3000] for line in out.splitlines() if re.search(r"fatal:|FAILED|Executed", line)]
    assert res.returncode == 0, "\n".join(why)
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(rf"{step}: Executed: Successful", out), f"step {step} did not run:\n{out[-4000:]}"


def test_idempotence_reads_pyinfra_change_count(molecule_run):
    """converge reports pyinfra's count: operations changed on the fresh target, none on the second run."""
    _, out, _ = molecule_run
    counts = [(host, int(n)) for host, n in CHANGED.findall(out)]
    assert len(counts) == 2 and counts[0][0] == counts[1][0] == f"{PREFIX}-1", counts
    assert counts[0][1] > 0 and counts[1][1] == 0, counts


def test_destroy_removed_the_lab(molecule_run):
    _, _, left = molecule_run
    assert left == 0, "molecule's destroy must have removed every target of the lab"
