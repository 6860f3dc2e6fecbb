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
    def in_container(self) -> bool:
        """True on a container (shares the host's kernel): kernel-level controls cannot be shown there."""
        return self.host.run("systemd-detect-virt --container --quiet").rc == 0

    def require_kernel(self) -> None:
        if self.in_container:
            pytest.skip("needs a real kernel (this host is a container): proven on the vm tier")

    def json(self, command: str):
        return json.loads(self.check_output(command))
