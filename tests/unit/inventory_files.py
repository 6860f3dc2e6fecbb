"""A one-host inventory file with a fresh key, for unit tests that run hardkit commands on it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def one_host_inventory(folder: Path, address: str = "127.0.0.1") -> Path:
    """`folder/inv.py`: host "one" at `address`, admin ops, allow-list 10.0.2.2/32, key made in `folder`."""
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inv = folder / "inv.py"
    inv.write_text(f'hosts = [("one", {{"ssh_hostname": "{address}", "ssh_key": "{key}", "admin_user": "ops", '
                   f'"admin_keys": ["{key}.pub"], "ssh_allow_from": ["10.0.2.2/32"]}})]\n')
    return inv
