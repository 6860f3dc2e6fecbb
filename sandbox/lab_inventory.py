"""Writes the pyinfra inventory for a lab's targets: the file `hardkit deploy` and `verify` read.

The file is an ordinary hardkit inventory (see `inventories/example.py`): the lab fills in
what an operator would for a real VPS — where to connect, which key, the admin to create, the
SSH allow-list — plus a `lab` entry per host that only the lab's own tests read.
"""

from __future__ import annotations

import os
import pprint
from pathlib import Path

from sandbox import keys, network
from sandbox.paths import labs_dir
from sandbox.target import Target

#: The group every lab target is in (pyinfra groups must be Python identifiers).
GROUP = "sandbox"
#: The admin the deploy creates on lab targets.
LAB_ADMIN = "ops"


def inventory_path(prefix: str) -> Path:
    return labs_dir() / prefix / "inventory.py"


def known_hosts_path(prefix: str) -> Path:
    return labs_dir() / prefix / "known_hosts"


def shared_data(prefix: str) -> dict:
    key = keys.operator_key()
    return {
        "ssh_key": str(key),
        "ssh_known_hosts_file": str(known_hosts_path(prefix)),
        "ssh_strict_host_key_checking": "yes",
        "bootstrap_user": "root",
        "admin_user": LAB_ADMIN,
        "admin_keys": [str(key) + ".pub"],
        # The controller reaches targets through the port forward, so it arrives from 10.0.2.2;
        # the allowed client proves the list works for a real outside address, v4 and v6.
        "ssh_allow_from": [f"{network.CONTROLLER_V4}/32", f"{network.ALLOWED_V4}/32",
                           f"{network.ALLOWED_V6}/128"],
    }


def host_entry(t: Target, net: network.LabNet) -> tuple[str, dict]:
    return (t.name, {
        "ssh_hostname": "127.0.0.1",
        # The lab reaches sshd through port forwards: one per guest port sshd may listen on.
        "ssh_forwarded_ports": t.ssh_forwards(),
        # An nspawn target shares this machine's kernel, as a container VPS shares its provider's.
        "container": t.tier == "nspawn",
        "lab": {
            "tier": t.tier, "prefix": t.prefix, "netns": t.netns,
            "address_v4": t.lab_v4, "address_v6": t.lab_v6,
            "clients": {role: {"netns": net.client_ns(role), "v4": v4, "v6": v6}
                        for role, (v4, v6) in net.clients.items()},
        },
    })


def write(prefix: str, targets: list[Target], net: network.LabNet) -> Path:
    kh = known_hosts_path(prefix)
    kh.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for t in targets:
        for port in t.ssh_forwards().values():
            lines += keys.known_hosts_lines("127.0.0.1", port, t.host_keys)
    kh.write_text("".join(line + "\n" for line in lines))
    shared = pprint.pformat(shared_data(prefix), indent=4, sort_dicts=False)
    hosts = ",\n".join(
        f"    ({name!r}, {{**_shared, **{pprint.pformat(data, sort_dicts=False)}}})"
        for name, data in (host_entry(t, net) for t in targets))
    text = (
        f'"""hardkit lab inventory for lab {prefix!r}: written by `hardkit sandbox up`, rewritten on each up."""\n\n'
        f"_shared = {shared}\n\n"
        f"{GROUP} = [\n{hosts},\n]\n"
    )
    path = inventory_path(prefix)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
