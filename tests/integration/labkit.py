"""Helpers for integration tests: boot a lab, deploy to it, verify it, act from its clients.

Each test module uses its own lab name so runs never share targets; every lab a test boots is
removed by the fixture that booted it, whatever the outcome.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploy import connect, runner
from deploy.inventory import Inventory, load
from sandbox import lab

REPO_ROOT = Path(__file__).resolve().parents[2]


def eager_bot() -> dict:
    """The paper bot tuned to trade often (fast averages, no band), so a lab host holds a position and has
    closed round trips, won and lost, within seconds to a few minutes; the streak breaker is relaxed so
    losses accumulate without halting it."""
    from roles.bot_config import paper_default

    cfg = paper_default()
    cfg["strategy"].update({"fast": 3, "slow": 20, "band_atr": 0.0})
    cfg["risk"]["max_consecutive_losses"] = 1000
    return cfg


@dataclass
class Lab:
    prefix: str
    inventory_path: Path
    _logins: dict = field(default_factory=dict, repr=False)

    @property
    def inventory(self) -> Inventory:
        return load(self.inventory_path)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.inventory.hosts]

    def host_data(self, name: str) -> dict:
        return next(h for h in self.inventory.hosts if h.name == name).data

    def deploy(self, limit: str | None = None, inventory_path: Path | None = None,
               site: Path = runner.SITE) -> runner.RunResult:
        inv = load(inventory_path or self.inventory_path)
        return runner.deploy(inv, inv.limit(limit), stream=subprocess.DEVNULL, site=site)

    def variant(self, path: Path, **changes) -> Path:
        """A copy of the lab's inventory with some data keys changed on every host (for one test)."""
        extra = "".join(f"    _d[{k!r}] = {v!r}\n" for k, v in changes.items())
        path.write_text(self.inventory_path.read_text() + "\nfor _name, _d in sandbox:\n" + extra)
        return path

    def client_ssh(self, role: str, user: str, address: str, *options: str, key: str | None = None,
                   command: str = "true", timeout: int = 10,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """An ssh login attempt from the allowed or attacker client (never reads ~/.ssh)."""
        cmd = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={timeout}", "-o", "LogLevel=ERROR",
               *options]
        cmd += ["-i", key, "-o", "IdentitiesOnly=yes"] if key else ["-o", "PubkeyAuthentication=no"]
        return self.from_client(role, [*cmd, f"{user}@{address}", command], timeout=timeout + 20, env=env)

    def verify(self, *extra: str) -> subprocess.CompletedProcess:
        return hardkit("verify", str(self.inventory_path), *extra)

    def ssh(self, name: str, command: str, user: str | None = None, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run `command` as root on a target: as root before the first deploy, via the admin's sudo after.
        `stdin` is fed to the command (how a test hands a target something that must not be on a command line)."""
        for attempt in (1, 2):
            login = self.login(name, fresh=attempt == 2)
            run_as, line = user or login.user, command
            if user is None and login.sudo:
                line = f"sudo -n sh -c {shlex.quote(command)}"
            cmd = lab.ssh_command(name, [line], user=run_as, port=login.port)
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
            # The login may have changed under us (root locked out by a deploy, sshd moved): look again.
            stale = ("Permission denied", "refused", "timed out during banner exchange")
            if not (res.returncode == 255 and any(word in res.stderr for word in stale)):
                return res
        return res

    def login(self, name: str, fresh: bool = False) -> connect.Login:
        """How to log in now (admin or root, which port), remembered until it stops working."""
        if fresh or name not in self._logins:
            self._logins[name] = connect.resolve(next(h for h in self.inventory.hosts if h.name == name))
        return self._logins[name]

    def from_client(self, role: str, command: list[str], timeout: float = 30,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the allowed or attacker client's network namespace (`env`: its whole environment)."""
        ns = self.host_data(self.names[0])["lab"]["clients"][role]["netns"]
        try:
            return subprocess.run(["ip", "netns", "exec", ns, *command], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:  # e.g. a connection cut by a ban mid-handshake
            return subprocess.CompletedProcess(e.cmd, 124, e.stdout or "", e.stderr or "timed out")

    def lab_address(self, name: str, family: int = 4) -> str:
        info = self.host_data(name)["lab"]
        return info["address_v4"] if family == 4 else info["address_v6"]

    def down(self) -> None:
        lab.down(self.prefix, log=lambda m: None)


def hardkit(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=str(REPO_ROOT),
                          capture_output=True, text=True, timeout=timeout)


def boot(prefix: str, count: int = 1, tier: str = "nspawn") -> Lab:
    lab.down(prefix, log=lambda m: None)  # a previous crashed run must not leak into this one
    path = lab.up(count=count, tier=tier, prefix=prefix, log=lambda m: None)
    return Lab(prefix, path)


def tcp_banner_cmd(address: str, port: int = 22, timeout: int = 3) -> list[str]:
    """A client-side command that prints the SSH banner if the port answers within `timeout` s."""
    probe = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=%d); "
             "print(s.recv(64).decode().strip())" % timeout)
    return ["timeout", str(timeout + 1), sys.executable, "-c", probe, address, str(port)]

