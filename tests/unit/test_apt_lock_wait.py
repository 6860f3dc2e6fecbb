"""The baseline's apt configuration makes apt-get wait for the dpkg lock (roles/baseline.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from roles import baseline


@pytest.mark.skipif(shutil.which("apt-config") is None, reason="apt-config (Debian's apt) is not on this machine")
def test_apt_reads_the_lock_timeout(tmp_path):
    conf = tmp_path / "lock-wait"
    conf.write_text(baseline.apt_lock_conf(baseline.APT_LOCK_WAIT_SECONDS.default))
    out = subprocess.run(["apt-config", "-c", str(conf), "dump", "DPkg::Lock::Timeout"], capture_output=True,
                         text=True, check=True).stdout
    assert f'DPkg::Lock::Timeout "{baseline.APT_LOCK_WAIT_SECONDS.default}";' in out, out
