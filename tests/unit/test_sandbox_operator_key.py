"""The lab operator's key is made once even when parallel test workers all ask for it first.

Seen in a CI run with its own HARDKIT_LAB_DIR: two workers ran ssh-keygen on the same path at once and
every test of the vm tier's module failed at setup.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ProcessPoolExecutor


def _ask(_):
    from sandbox import keys

    key = keys.operator_key()
    public = open(f"{key}.pub").read().split()[:2]
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
    return public == derived.stdout.split()[:2]


def test_parallel_first_requests_share_one_key_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("HARDKIT_LAB_DIR", str(tmp_path))
    with ProcessPoolExecutor(8) as pool:
        assert all(pool.map(_ask, range(8)))
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [".lock", "operator_ed25519", "operator_ed25519.pub"]
