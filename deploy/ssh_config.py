"""An OpenSSH client config for an inventory's hosts, for tools that speak ssh:// (testinfra, ssh).

Host keys are checked strictly against the inventory's known_hosts; connections are
multiplexed so a suite of checks costs one handshake per host.
"""

from __future__ import annotations

from pathlib import Path

from deploy.connect import Login, known_hosts_file
from deploy.inventory import Host


def render(hosts: list[Host], logins: dict[str, Login], control_dir: Path) -> str:
    blocks = []
    for h in hosts:
        login = logins.get(h.name)
        if login is None:
            continue
        blocks.append("\n".join([
            f"Host {h.name}",
            f"    HostName {h.data['ssh_hostname']}",
            f"    Port {login.port}",
            f"    User {login.user}",
            f"    IdentityFile {Path(h.data['ssh_key']).expanduser()}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {known_hosts_file(h)}",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    LogLevel ERROR",
            "    ConnectTimeout 15",
            f"    ControlPath {control_dir}/%C",
        ]))
    return "\n\n".join(blocks) + "\n"
