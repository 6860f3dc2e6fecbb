"""How hardkit logs in to a host, decided per host and per run.

A provider hands a VPS over as root with a key; after the first deploy root may no longer log
in and the named admin (with sudo) is the way in. So each run probes: the admin first (it must
also pass `sudo -n`), then the bootstrap user. The probe uses paramiko — the same SSH stack
pyinfra uses — with strict host-key checking, so a crypto policy that locks paramiko out is
caught here and not half-way through a deploy. The probe also reports the address the host
sees the controller connecting from, which the lockout pre-flight checks against the allow-list.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from deploy.inventory import Host
from roles.access_data import ADMIN_USER, BOOTSTRAP_USER, FIXED_PORT_KEY, SSHD_PORT

CONNECT_TIMEOUT = 15.0

# paramiko's transport thread logs a failed handshake (a port that does not speak SSH) with its
# traceback, through logging's last resort to stderr; the reason reaches the operator in the
# login error instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass
class Login:
    host: str
    user: str  # who we log in as
    sudo: bool  # whether commands need sudo (True for the admin)
    client_address: str  # the controller's address as the host sees it
    port: int = 22  # the port the controller connects to
    sshd_port: int | None = None  # the sshd port that is (None: unknown, behind a fixed ssh_port)
    #: The probe's own connection, kept open by resolve(keep=True) for the next steps of the same run
    #: (credential delivery) instead of a login each; close() ends it.
    client: paramiko.SSHClient | None = field(default=None, repr=False, compare=False)

    def open_client(self) -> paramiko.SSHClient | None:
        """The kept connection while it is still up, else None."""
        transport = self.client.get_transport() if self.client else None
        return self.client if transport is not None and transport.is_active() else None

    def close(self) -> None:
        if self.client:
            self.client.close()
            self.client = None


class LoginError(Exception):
    pass


def known_hosts_file(h: Host) -> Path:
    return Path(h.data.get("ssh_known_hosts_file") or Path.home() / ".ssh" / "known_hosts").expanduser()


def candidate_ports(data: dict) -> list[tuple[int | None, int]]:
    """(sshd port, port to connect to) in the order to try: the wanted sshd port, then 22 (a fresh VPS),
    then any other forwarded port (a move still under way). An explicit ssh_port is the only choice."""
    fwd = {int(k): int(v) for k, v in (data.get("ssh_forwarded_ports") or {}).items()}
    wanted = SSHD_PORT.value(data)
    if fwd:
        order = list(dict.fromkeys([wanted, 22, *sorted(fwd)]))
        return [(p, fwd[p]) for p in order if p in fwd]
    if data.get("ssh_port"):
        return [(None, int(data["ssh_port"]))]
    return [(p, p) for p in dict.fromkeys([wanted, 22])]


def connect_port(data: dict, sshd_port: int) -> int:
    """The port the controller connects to in order to reach sshd on `sshd_port`."""
    fwd = {int(k): int(v) for k, v in (data.get("ssh_forwarded_ports") or {}).items()}
    if fwd:
        if sshd_port not in fwd:
            raise LoginError(f"ssh_forwarded_ports has no forward for sshd port {sshd_port}")
        return fwd[sshd_port]
    if data.get(FIXED_PORT_KEY) or (data.get("ssh_port") and FIXED_PORT_KEY not in data):
        return int(data["ssh_port"])
    return sshd_port


def open_client(h: Host, user: str, timeout: float = CONNECT_TIMEOUT, port: int | None = None) -> paramiko.SSHClient:
    """An authenticated paramiko client to `h` as `user`, host key checked against known_hosts."""
    client = paramiko.SSHClient()
    kh = known_hosts_file(h)
    if kh.exists():
        client.load_host_keys(str(kh))
    if h.data.get("ssh_strict_host_key_checking", "yes") == "accept-new":
        client.set_missing_host_key_policy(_AcceptNewAndSave(kh))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            h.data["ssh_hostname"], port=port or candidate_ports(h.data)[0][1], username=user,
            key_filename=str(Path(h.data["ssh_key"]).expanduser()), look_for_keys=False, allow_agent=False,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout)
    except BaseException:
        client.close()  # a failed login must not leave a half-open session holding one of sshd's MaxStartups
        raise
    return client


class _AcceptNewAndSave(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record an unknown key, but still refuse a changed one (paramiko does that)."""

    def __init__(self, path: Path):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.path))


def run(client: paramiko.SSHClient, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err


def _try(h: Host, user: str, need_sudo: bool, sshd_port: int | None, port: int,
         keep: bool = False) -> tuple[Login | None, str]:
    """Log in once; (None, why) for an answer that says no, LoginError for a host that must not be trusted.
    With keep, a login that works keeps its connection open (Login.client)."""
    try:
        client = open_client(h, user, port=port)
    except paramiko.BadHostKeyException as e:
        raise LoginError(f"{h.name}: the host key changed ({e}); refusing to connect (possible MITM)") from None
    except paramiko.SSHException as e:
        if "not found in known_hosts" in str(e):
            raise LoginError(f"{h.name}: host key unknown and ssh_strict_host_key_checking=yes: {e}") from None
        return None, f"{user}@port {port}: {e}"
    except (OSError, socket.timeout) as e:
        return None, f"{user}@port {port}: cannot connect: {e}"
    ok = False
    try:
        check = 'echo "$SSH_CONNECTION"' + ("; sudo -n true" if need_sudo else "")
        rc, out, err = run(client, check, timeout=30)
        ok = rc == 0
    except (paramiko.SSHException, OSError, socket.timeout) as e:
        # Authenticated, then the session closed or stalled (sshd reloading, a PAM session refused): a no.
        return None, f"{user}@port {port}: logged in, then the session failed: {e or type(e).__name__}"
    finally:
        if not (keep and ok):
            client.close()
    if rc != 0:
        return None, f"{user}: logged in but `sudo -n` failed ({err.strip() or rc})"
    address = out.split()[0] if out.split() else ""
    return Login(h.name, user, need_sudo, _normalise(address), port, sshd_port, client if keep else None), ""


def resolve(h: Host, keep: bool = False) -> Login:
    """Log in as the admin if that works (with sudo), otherwise as the bootstrap user; on the first
    sshd port that answers (see candidate_ports). With keep, the Login holds that connection open
    (Login.client) until its close()."""
    admin, bootstrap = h.get(ADMIN_USER), h.get(BOOTSTRAP_USER)
    why = []
    for sshd_port, port in candidate_ports(h.data):
        for user, sudo in ((admin, True), (bootstrap, bootstrap != "root")):
            login, reason = _try(h, user, sudo, sshd_port, port, keep)
            if login:
                return login
            why.append(reason)
            if "cannot connect" in reason:
                break  # nothing listens there: do not try the other user on this port
    raise LoginError(f"{h.name}: cannot log in as the admin or the bootstrap user ({'; '.join(why)})")


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def address_allowed(address: str, allow_from: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net) for net in allow_from)
