"""One verified host: its testinfra handle, inventory data, and facts gathered once.

Over a software-CPU VM each command costs seconds, so expensive state (`sshd -T`, the nft
ruleset, ...) is read once per host and shared by every check that needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import pytest

from deploy.connect import Login
from deploy.report import NOT_VERIFIED_PREFIX as NOT_VERIFIED
from roles.platform_data import CONTAINER


@dataclass(eq=False)
class Target:
    name: str
    host: object  # testinfra.host.Host
    data: dict
    login: Login
    _cache: dict = field(default_factory=dict)

    def run(self, command: str):
        return self.host.run(command)

    def check_output(self, command: str) -> str:
        res = self.host.run(command)
        if res.rc != 0:
            raise AssertionError(f"`{command}` failed on {self.name} (rc={res.rc}): {res.stderr.strip()}")
        return res.stdout

    def fact(self, key: str, producer):
        """Compute a fact once per host for the whole session."""
        if key not in self._cache:
            self._cache[key] = producer(self)
        return self._cache[key]

    @cached_property
    def container_kind(self) -> str | None:
        """The container technology (lxc, openvz, systemd-nspawn, ...) or None on a VM or metal."""
        res = self.host.run("systemd-detect-virt --container")
        return res.stdout.strip() if res.rc == 0 else None

    @property
    def in_container(self) -> bool:
        """True on a container (shares the provider's kernel): kernel-level controls cannot be shown there."""
        return self.container_kind is not None

    def require_kernel(self, what: str, why: str = "its kernel belongs to the provider") -> None:
        """Go on only where the host owns its kernel. On a container the control is NOT VERIFIED, saying
        what and why, if the inventory declares the host a container; otherwise it fails."""
        if not self.in_container:
            return
        if CONTAINER.value(self.data):
            pytest.skip(f"{NOT_VERIFIED}{what} cannot be checked: the host is a container ({self.container_kind}), "
                        f"{why}")
        pytest.fail(f"{what} cannot be checked: the host is a container ({self.container_kind}) but the inventory "
                    f"does not declare it ({CONTAINER.name}: True); declare it to report this control as "
                    "NOT VERIFIED, or run on a VM", pytrace=False)

    def json(self, command: str):
        return json.loads(self.check_output(command))
