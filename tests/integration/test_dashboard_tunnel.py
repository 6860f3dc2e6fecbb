"""The dashboard reached on a hardened lab VPS the way the controller reaches it: sshd forwards
nothing, so deploy/tunnel.py opens one paramiko exec channel per connection running
`hardkit-bot dashboard-proxy` as the admin (a member of the socket's group).

The bot here is the source tree run by the target's python3 (the bot role's packaging is
tested with the role); what this proves is the path: hardened sshd, exec channel, proxy, socket.
"""

from __future__ import annotations

import http.client
import io
import json
import shlex
import tarfile
from pathlib import Path

import paramiko
import pytest

from deploy import connect
from deploy.tunnel import Tunnel
from tests.integration.labkit import boot

pytestmark = pytest.mark.lab
PREFIX = "dxtun"
REPO = Path(__file__).resolve().parents[2]
ROOT, RUNTIME, STATE = "/opt/dx-bot", "/run/dx-bot", "/var/lib/dx-bot"
BOT = f"env PYTHONPATH={ROOT} python3 -m hardkit_bot"


def _bot_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(REPO / "bot" / "src" / "hardkit_bot", "hardkit_bot",
                filter=lambda ti: None if "__pycache__" in ti.name else ti)
        cfg = ((REPO / "bot" / "examples" / "paper.toml").read_text()
               .replace('"Europe/Berlin"', '"UTC"') + "\n[dashboard]\nsample_s = 0.5\n").encode()
        info = tarfile.TarInfo("bot.toml")
        info.size = len(cfg)
        tar.addfile(info, io.BytesIO(cfg))
    return buf.getvalue()


def _exec(client: paramiko.SSHClient, command: str, stdin: bytes = b"", timeout: float = 60) -> tuple[int, str]:
    """Run `command` on an exec channel with `stdin`; its exit code and output (stderr merged)."""
    chan = client.get_transport().open_session(timeout=timeout)
    chan.settimeout(timeout)
    chan.set_combine_stderr(True)
    chan.exec_command(command)
    chan.sendall(stdin)
    chan.shutdown_write()
    out = b""
    while data := chan.recv(65536):
        out += data
    rc = chan.recv_exit_status()
    chan.close()
    return rc, out.decode(errors="replace")


@pytest.fixture(scope="module")
def admin():
    """A hardened lab VPS running a paper bot; yields a paramiko client logged in as the admin."""
    lab = boot(PREFIX, count=1)
    client = None
    try:
        first = lab.deploy()
        assert first.ok, {n: (h.failed, h.error) for n, h in first.hosts.items()}
        host = lab.inventory.hosts[0]
        login = connect.resolve(host)
        assert login.sudo, "after a deploy the admin logs in (with sudo)"
        client = connect.open_client(host, login.user, port=login.port)
        sudo = "sudo -n sh -c "
        rc, out = _exec(client, sudo + shlex.quote(f"mkdir -p {ROOT} && tar -xzf - -C {ROOT} && chmod -R go+rX {ROOT}"), _bot_tarball())
        assert rc == 0, out
        # The bot as root, its sockets' group the admin's (the role uses the operators group instead).
        start = (f"mkdir -p -m 0750 {RUNTIME} && chgrp {login.user} {RUNTIME} && "
                 f"HARDKIT_REBOOT_INHIBIT_DIR={ROOT}/inhibit setsid {BOT} run --config {ROOT}/bot.toml "
                 f"--state-dir {STATE} --runtime-dir {RUNTIME} >{ROOT}/bot.log 2>&1 </dev/null & echo $! >{ROOT}/bot.pid; "
                 f"for i in $(seq 100); do [ -S {RUNTIME}/dashboard.sock ] && break; sleep 0.1; done; "
                 f"chgrp {login.user} {RUNTIME}/dashboard.sock {RUNTIME}/control.sock && ls -l {RUNTIME}")
        rc, out = _exec(client, sudo + shlex.quote(start))
        assert rc == 0 and "dashboard.sock" in out, out
        yield client
    finally:
        if client is not None:
            _exec(client, f"sudo -n sh -c 'kill $(cat {ROOT}/bot.pid)' || true")
            client.close()
        lab.down()


def _opener(client: paramiko.SSHClient):
    """What `hardkit bot dashboard` does per connection: an exec channel running the proxy."""
    def open_stream():
        chan = client.get_transport().open_session(timeout=20)
        chan.exec_command(f"{BOT} dashboard-proxy --runtime-dir {RUNTIME}")
        return chan
    return open_stream


def _get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_dashboard_through_an_exec_channel_while_sshd_forwards_nothing(admin):
    with pytest.raises(paramiko.ChannelException):   # what `ssh -L` would need is refused
        admin.get_transport().open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0), timeout=20)
    rc, out = _exec(admin, f"{BOT} dashboard-proxy --runtime-dir {RUNTIME}",
                    b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert rc == 0 and out.startswith("HTTP/1.1 200 OK"), out[-2000:]
    with Tunnel(_opener(admin)) as t:
        for _ in range(3):   # each connection its own channel and proxy
            code, body = _get(t.port, "/api/status")
            assert code == 200, body
            st = json.loads(body)
            assert st["state"] in ("ACTIVE", "REDUCING") and {u["name"] for u in st["limits"]} >= {
                "daily_loss_pct", "drawdown_pct", "consecutive_losses", "total_exposure", "orders_per_minute_throttle"}
        code, body = _get(t.port, "/metrics")
        assert code == 200
        assert b'hardkit_bot_limit_value{limit="drawdown_pct"} 10.0' in body
        code, body = _get(t.port, "/")
        assert code == 200 and b"hardkit-bot risk dashboard" in body


def test_the_bot_listens_on_no_network_port(admin):
    rc, out = _exec(admin, "sudo -n ss -H -ltnup")
    assert rc == 0, out
    assert "python3" not in out, f"the bot listens on a network port:\n{out}"
