"""The lab network: a switch namespace with a bridge, the allowed and attacker clients, target legs.

Nothing is created in the controller's own network namespace: the bridge lives in a
namespace of its own (`hk-PREFIX-sw`, see `ns_tag`), so two labs with different prefixes never collide
and no lab address ever appears on the host. Each target gets a second interface `lab0`
on that bridge, so an IP allow-list is tested with real packets from real source addresses.

Addresses are documentation ranges (RFC 5737 / RFC 3849) that exist only inside these namespaces.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sandbox.host import run
from sandbox.paths import DEFAULT_LAB_DIR, lab_dir

#: Client addresses: the issue fixes the IPv4 ones; IPv6 mirrors them in 2001:db8:5100::/64.
ALLOWED_V4 = "198.51.100.10"
ATTACKER_V4 = "198.51.100.66"
ALLOWED_V6 = "2001:db8:5100::10"
ATTACKER_V6 = "2001:db8:5100::66"
PREFIX_V4 = 24
PREFIX_V6 = 64
#: Target i (1-based) gets 198.51.100.(100+i) and 2001:db8:5100::(100+i).
TARGET_BASE = 100
TARGET_IFNAME = "lab0"

#: The address SSH from the controller arrives from, through slirp4netns's or QEMU's port forward.
CONTROLLER_V4 = "10.0.2.2"


def ns_tag() -> str:
    """Namespace name prefix: `hk` for the default lab folder, `hkXXXX` for another one (e.g. a CI run
    with its own HARDKIT_LAB_DIR), so two lab folders never share a namespace even with equal lab names."""
    folder = lab_dir()
    if folder == DEFAULT_LAB_DIR:
        return "hk"
    return "hk" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:4]


@dataclass(frozen=True)
class LabNet:
    prefix: str

    @property
    def switch_ns(self) -> str:
        return f"{ns_tag()}-{self.prefix}-sw"

    def client_ns(self, role: str) -> str:
        return f"{ns_tag()}-{self.prefix}-{role}"

    @property
    def clients(self) -> dict[str, tuple[str, str]]:
        return {"allowed": (ALLOWED_V4, ALLOWED_V6), "attacker": (ATTACKER_V4, ATTACKER_V6)}


def target_addresses(index: int) -> tuple[str, str]:
    return f"198.51.100.{TARGET_BASE + index}", f"2001:db8:5100::{TARGET_BASE + index}"


def netns_exists(name: str) -> bool:
    return name in list_netns()


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns(ns: str, *cmd: str) -> None:
    run(["ip", "netns", "exec", ns, *cmd])


def ensure_switch(net: LabNet) -> None:
    """Create the bridge namespace and both clients once; safe to call again."""
    sw = net.switch_ns
    if not netns_exists(sw):
        run(["ip", "netns", "add", sw])
        run(["ip", "-n", sw, "link", "set", "lo", "up"])
        run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", sw, "link", "set", "br0", "up"])
    for role, (v4, v6) in net.clients.items():
        ns = net.client_ns(role)
        if netns_exists(ns):
            continue
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", sw, "link", "add", role, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", sw, "link", "set", role, "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{v4}/{PREFIX_V4}", "dev", "eth0"])
        run(["ip", "-n", ns, "addr", "add", f"{v6}/{PREFIX_V6}", "dev", "eth0", "nodad"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])


def attach_target(net: LabNet, target_ns: str, index: int) -> tuple[str, str]:
    """Give the target namespace its `lab0` leg on the bridge; returns its (v4, v6) addresses."""
    v4, v6 = target_addresses(index)
    port = f"t{index}"
    run(["ip", "-n", net.switch_ns, "link", "del", port], check=False)
    run(["ip", "-n", net.switch_ns, "link", "add", port, "type", "veth", "peer", "name", TARGET_IFNAME,
         "netns", target_ns])
    run(["ip", "-n", net.switch_ns, "link", "set", port, "master", "br0", "up"])
    run(["ip", "-n", target_ns, "addr", "add", f"{v4}/{PREFIX_V4}", "dev", TARGET_IFNAME])
    run(["ip", "-n", target_ns, "addr", "add", f"{v6}/{PREFIX_V6}", "dev", TARGET_IFNAME, "nodad"])
    run(["ip", "-n", target_ns, "link", "set", TARGET_IFNAME, "up"])
    # A new target may take an address a previous one had: clients must not keep stale neighbours.
    for role in net.clients:
        run(["ip", "-n", net.client_ns(role), "neigh", "flush", "all"], check=False)
    return v4, v6


def detach_target(net: LabNet, index: int) -> None:
    if netns_exists(net.switch_ns):
        run(["ip", "-n", net.switch_ns, "link", "del", f"t{index}"], check=False)


def remove_switch(net: LabNet) -> None:
    for name in [net.client_ns(r) for r in net.clients] + [net.switch_ns]:
        if netns_exists(name):
            run(["ip", "netns", "del", name], check=False)
