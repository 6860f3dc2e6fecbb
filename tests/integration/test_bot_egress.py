"""The bot's egress allow-list on a real lab target, with real packets.

An "exchange" (a small TCP service on 443, and a UDP one on 53 standing in for a resolver) runs in
the lab's allowed-client namespace, v4 and v6, and a second set in the attacker namespace. The
inventory allows only the first: by name for v4 (resolved on the host through /etc/hosts, so no
DNS server is needed in the lab) and as a literal IPv6 endpoint. From the bot's uid the allowed
exchange answers and the other is dropped and counted; DNS reaches only a resolver listed in
/etc/resolv.conf; root and other users still reach everything; a second deploy changes
nothing; a firewall restart or a flushed table is repaired; the timer's refresh follows the name
to a new address and keeps the last good one when the name stops resolving; the table is back
after a reboot; verify passes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from roles import bot_egress as role
from roles.bot_paths import BOT_USER
from tests.integration.labkit import boot
from tests.integration.oslab import derived_inventory, reboot, root

pytestmark = pytest.mark.lab
PREFIX = "exeg"
EXCHANGE_NAME = "exchange.hardkit.test"
PORT = 443
DNS_PORT = 53
GREETING = "hardkit-lab-exchange"
#: The @deploy names of this slice's roles (operation names start with them).
DEPLOYS = ("Bot service user", "Bot egress allow-list")


def serve(address: str, port: int, udp: bool = False) -> None:
    """Greet every TCP client (or answer every UDP datagram) with one line, until killed (in a client's namespace)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    greeting = f"{GREETING} {address}\n".encode()
    if udp:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((address, port))
        while True:
            _, peer = sock.recvfrom(512)
            sock.sendto(greeting, peer)
    srv = socket.create_server((address, port), family=family)
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(greeting)


class Service:
    """A greeting service in one of the lab's client namespaces (started here, stopped by PID)."""

    def __init__(self, netns: str, address: str, port: int, udp: bool = False):
        repo = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c",
             f"import sys; sys.path.insert(0, {str(repo)!r}); "
             f"from tests.integration.test_bot_egress import serve; serve({address!r}, {port}, {udp})"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    handle = boot(PREFIX, count=1)
    clients = handle.host_data(handle.names[0])["lab"]["clients"]
    servers = [Service(c["netns"], c[family], port, udp=port == DNS_PORT)
               for c in (clients["allowed"], clients["attacker"]) for family in ("v4", "v6")
               for port in (PORT, DNS_PORT)]
    try:
        handle.allowed, handle.other = clients["allowed"]["v4"], clients["attacker"]["v4"]
        handle.allowed_v6, handle.other_v6 = clients["allowed"]["v6"], clients["attacker"]["v6"]
        handle.egress_inventory = derived_inventory(
            handle, tmp_path_factory.mktemp("egress"),
            bot_egress_endpoints=[f"{EXCHANGE_NAME}:{PORT}", f"[{handle.allowed_v6}]:{PORT}"])
        set_hosts_entry(handle, handle.allowed)
        yield handle
    finally:
        for s in servers:
            s.stop()
        handle.down()


def name(lab) -> str:
    return lab.names[0]


def set_hosts_entry(lab, address: str | None) -> None:
    """Point the exchange's name at `address` in the target's /etc/hosts (None: the name is unknown)."""
    line = f"echo '{address} {EXCHANGE_NAME}' >> /etc/hosts" if address else "true"
    res = root(lab, name(lab), f"sed -i '/ {EXCHANGE_NAME}$/d' /etc/hosts && {line}")
    assert res.returncode == 0, res.stderr


def connect_as(lab, user: str, address: str, udp: bool = False) -> subprocess.CompletedProcess:
    """From the target, `user`'s process reaches address:443 over TCP (or :53 over UDP) and prints the greeting."""
    if udp:
        family = "socket.AF_INET6" if ":" in address else "socket.AF_INET"
        probe = (f"import socket; s = socket.socket({family}, socket.SOCK_DGRAM); s.settimeout(3); "
                 f"s.sendto(b'q', ({address!r}, {DNS_PORT})); print(s.recv(64).decode().strip())")
    else:
        probe = (f"import socket; s = socket.create_connection(({address!r}, {PORT}), timeout=3); "
                 "print(s.recv(64).decode().strip())")
    who = "" if user == "root" else f"setpriv --reuid={user} --regid=$(id -g {user}) --clear-groups -- "
    return root(lab, name(lab), f"{who}python3 -c \"{probe}\"")


def dropped(lab) -> int:
    out = root(lab, name(lab), f"nft -j list counter inet hardkit_bot {role.COUNTER}").stdout
    return next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)


def refresh(lab) -> str:
    """Run the timer's service now; its journal lines of this run."""
    since = root(lab, name(lab), "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    res = root(lab, name(lab), f"systemctl start {role.REFRESH_UNIT}")
    assert res.returncode == 0, res.stderr
    return root(lab, name(lab), f"journalctl -u {role.REFRESH_UNIT} --since '{since}' -o cat --no-pager").stdout


@pytest.fixture(scope="module")
def deployed(lab):
    result = lab.deploy(inventory_path=lab.egress_inventory)
    assert result.ok, {n: (h.failed, h.error) for n, h in result.hosts.items()}
    return result


def test_bot_reaches_the_allowed_exchange(lab, deployed):
    for address in (lab.allowed, lab.allowed_v6):  # by name (v4) and as a literal IPv6 endpoint
        res = connect_as(lab, BOT_USER, address)
        assert res.returncode == 0 and f"{GREETING} {address}" in res.stdout, (address, res.stderr)


def test_other_addresses_are_dropped_and_counted_for_the_bot_only(lab, deployed):
    for address in (lab.other, lab.other_v6):
        before = dropped(lab)
        res = connect_as(lab, BOT_USER, address)
        assert res.returncode != 0 and "timed out" in res.stderr, (address, res.stdout, res.stderr)
        assert dropped(lab) > before, address
        for user in ("root", "nobody"):  # other users' egress is unchanged
            res = connect_as(lab, user, address)
            assert res.returncode == 0 and f"{GREETING} {address}" in res.stdout, (user, address, res.stderr)


def test_dns_only_to_the_hosts_resolvers(lab, deployed):
    """A resolver listed in /etc/resolv.conf is reachable from the bot on port 53 (after a refresh); another is not."""
    try:
        assert root(lab, name(lab), f"cp /etc/resolv.conf /etc/resolv.conf.exeg && "
                                    f"echo 'nameserver {lab.allowed}' >> /etc/resolv.conf").returncode == 0
        assert f"resolvers_v4: +{lab.allowed}" in refresh(lab)
        res = connect_as(lab, BOT_USER, lab.allowed, udp=True)
        assert res.returncode == 0 and f"{GREETING} {lab.allowed}" in res.stdout, res.stderr
        before = dropped(lab)
        assert connect_as(lab, BOT_USER, lab.other, udp=True).returncode != 0
        assert dropped(lab) > before
        assert connect_as(lab, "nobody", lab.other, udp=True).returncode == 0
    finally:
        root(lab, name(lab), "mv /etc/resolv.conf.exeg /etc/resolv.conf")
        refresh(lab)


def test_second_deploy_changes_nothing(lab, deployed):
    again = lab.deploy(inventory_path=lab.egress_inventory)
    assert again.ok
    assert deployed.hosts[name(lab)].changed and any(op.startswith(DEPLOYS[1]) for op in
                                                     deployed.hosts[name(lab)].changed)
    mine = [op for op in again.hosts[name(lab)].changed if op.startswith(DEPLOYS)]
    assert mine == [], mine
    others = [op for op in again.hosts[name(lab)].changed if not op.startswith(DEPLOYS)]
    if others:  # other roles are held to this by their own tests
        warnings.warn(f"operations of other roles changed on a repeated deploy: {others}")


def table_loaded(lab) -> bool:
    return root(lab, name(lab), "nft list table inet hardkit_bot >/dev/null").returncode == 0


def test_table_comes_back_after_a_firewall_restart_or_a_flush(lab, deployed):
    # Debian's nftables.service flushes every table when it stops: the loader is PartOf= it.
    assert root(lab, name(lab), "systemctl restart nftables.service").returncode == 0
    deadline = time.monotonic() + 90
    while not table_loaded(lab):
        assert time.monotonic() < deadline, "the allow-list was not reloaded with nftables.service"
        time.sleep(1)
    assert connect_as(lab, BOT_USER, lab.other).returncode != 0
    # Removed behind systemd's back: the next deploy puts it back (and so would the timer's refresh).
    assert root(lab, name(lab), "nft delete table inet hardkit_bot").returncode == 0
    result = lab.deploy(inventory_path=lab.egress_inventory)
    assert result.ok and table_loaded(lab)
    assert [op for op in result.hosts[name(lab)].changed if op.startswith(DEPLOYS)], result.hosts[name(lab)].changed
    assert connect_as(lab, BOT_USER, lab.other).returncode != 0
    assert connect_as(lab, BOT_USER, lab.allowed).returncode == 0


def test_refresh_follows_the_name_and_keeps_the_last_good_address(lab, deployed):
    try:
        set_hosts_entry(lab, lab.other)  # the exchange "moved"
        log = refresh(lab)
        assert f"exchange_v4: +{lab.other} . {PORT}, -{lab.allowed} . {PORT}" in log, log
        assert connect_as(lab, BOT_USER, lab.other).returncode == 0
        assert connect_as(lab, BOT_USER, lab.allowed).returncode != 0
        set_hosts_entry(lab, None)  # the name stops resolving: the last good address stays
        log = refresh(lab)
        assert "resolution failed" in log and f"keeping the last good addresses: {lab.other}" in log, log
        assert connect_as(lab, BOT_USER, lab.other).returncode == 0
    finally:
        set_hosts_entry(lab, lab.allowed)
        refresh(lab)
    assert connect_as(lab, BOT_USER, lab.allowed).returncode == 0


def test_verify_passes_the_egress_controls(lab, deployed, tmp_path):
    from tests.integration.labkit import hardkit

    res = hardkit("verify", str(lab.egress_inventory), "--report-dir", str(tmp_path))
    rows = json.loads((tmp_path / "compliance.json").read_text())["controls"]
    mine = {r["control"]: r["status"] for r in rows if r["control"].startswith("hk-bot-egr-")}
    assert mine and set(mine.values()) == {"PASS"} and len(mine) == 6, (mine, res.stdout[-3000:])


def test_allow_list_survives_a_reboot(lab, deployed):
    reboot(lab, name(lab))
    deadline = time.monotonic() + 180
    while root(lab, name(lab), f"systemctl is-active {role.BOOT_UNIT}").stdout.strip() != "active":
        assert time.monotonic() < deadline, "the allow-list's unit did not start at boot"
        time.sleep(2)
    assert connect_as(lab, BOT_USER, lab.allowed).returncode == 0
    before = dropped(lab)
    assert connect_as(lab, BOT_USER, lab.other).returncode != 0
    assert dropped(lab) > before
