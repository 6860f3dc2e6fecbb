"""The risk dashboard over its Unix socket, reached through the controller's tunnel and a real
dashboard-proxy: endpoints, read-only, loopback Host only, socket mode, no TCP listener, off switch.
(The page itself is driven in a real Chromium in test_bot_dashboard_browser.py.)"""
import json
import os
import re
import stat
import subprocess
import threading
import time

import pytest

from hardkit_bot import control
from hardkit_bot.config import ConfigError, parse
from hardkit_bot.dashboard_proxy import DEFAULT_RUNTIME_DIR, SOCKET_NAME

from bot_helpers import config_text
from dash_helpers import get, proxy_argv, proxy_env, start_bot, tunnel_to
from deploy.tunnel import ProcessStream, Tunnel
from roles import bot_paths

REQUIRED_LIMITS = ("daily_loss_pct", "drawdown_pct", "consecutive_losses", "total_exposure", "orders_per_minute_throttle")


def test_endpoints_serve_the_bots_status_limits_curve_and_metrics(bot):
    rt = start_bot(bot)
    with tunnel_to(rt) as t:
        code, hdr, body = get(t.port, "/")
        assert code == 200 and hdr["content-type"].startswith("text/html")
        assert b"<script>" in body and b"http" not in body.replace(b"http://www.w3.org/2000/svg", b"")  # no fetch elsewhere
        assert "script-src 'sha256-" in hdr["content-security-policy"] and "connect-src 'self'" in hdr["content-security-policy"]

        def curve():
            st = json.loads(get(t.port, "/api/status")[2])
            return len(st["equity_curve"]) >= 3 and st
        st = bot.wait_for(curve, what="three equity points")
        direct = control.request(rt / "control.sock", "status", timeout=10)
        assert st["state"] == direct["state"] == "ACTIVE"
        assert {u["name"]: u["limit"] for u in st["limits"]} == {u["name"]: u["limit"] for u in direct["limits"]}
        assert set(REQUIRED_LIMITS) <= {u["name"] for u in st["limits"]}
        ts = [p[0] for p in st["equity_curve"]]
        assert ts == sorted(ts) and all(p[1] > 0 for p in st["equity_curve"])

        code, hdr, body = get(t.port, "/metrics")
        text = body.decode()
        assert code == 200 and hdr["content-type"].startswith("text/plain; version=0.0.4")
        assert 'hardkit_bot_state{state="ACTIVE"} 1' in text
        assert re.search(r'^hardkit_bot_limit_value\{limit="daily_loss_pct"\} 3\.0$', text, re.M)


def test_read_only_loopback_host_only_and_unknown_paths(bot):
    rt = start_bot(bot)
    with tunnel_to(rt) as t:
        for method in ("POST", "PUT", "DELETE", "TRACE"):
            code, hdr, _ = get(t.port, "/api/status", method=method)
            assert code == 405 and hdr["allow"] == "GET, HEAD"
        assert get(t.port, "/api/status", host="evil.example:8080")[0] == 403   # a DNS-rebound page
        assert get(t.port, "/api/status", host="localhost:9")[0] == 200
        assert get(t.port, "/halt")[0] == 404
        code, hdr, body = get(t.port, "/api/status", method="HEAD")
        assert code == 200 and body == b"" and int(hdr["content-length"]) > 0
    assert control.request(rt / "control.sock", "status", timeout=10)["state"] == "ACTIVE"


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def _listening(table: str) -> set[str]:
    """Inodes of sockets in LISTEN state in /proc/net/tcp or tcp6."""
    with open(f"/proc/net/{table}") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {r[9] for r in rows if r[3] == "0A"}


def test_dashboard_socket_has_the_control_sockets_mode_and_nothing_listens_on_tcp(bot):
    rt = start_bot(bot)
    dash = rt / "dashboard.sock"
    bot.wait_for(dash.exists, what="dashboard socket")
    assert stat.S_ISSOCK(os.stat(dash).st_mode)
    assert stat.S_IMODE(os.stat(dash).st_mode) == stat.S_IMODE(os.stat(rt / "control.sock").st_mode) == 0o660
    pid = bot.procs[-1].pid
    mine = _socket_inodes(pid)
    with open("/proc/net/unix") as f:
        unix = {line.split()[6]: line.split()[-1] for line in f.readlines()[1:] if len(line.split()) >= 8}
    assert str(dash) in {unix.get(i) for i in mine}, "the inode scan must see the bot's own sockets"
    assert not mine & (_listening("tcp") | _listening("tcp6")), "the bot listens on TCP"


def test_disabled_dashboard_has_no_socket_and_the_proxy_says_so(bot):
    rt = start_bot(bot, dashboard="enabled = false")
    bot.wait_for(lambda: control.request(rt / "control.sock", "status", timeout=10)["steps"] > 2, what="steps")
    assert not (rt / "dashboard.sock").exists()
    r = subprocess.run(proxy_argv(rt), env=proxy_env(), input=b"", capture_output=True, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 3 and "dashboard not reachable" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["a-file", "x" * 120])
def test_proxy_with_a_bad_runtime_dir_is_a_one_line_error(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    r = subprocess.run([*proxy_argv(tmp_path / where)], env=proxy_env(), input=b"", capture_output=True, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 3 and err.startswith("hardkit-bot: ") and len(err.strip().splitlines()) == 1, err


def test_dashboard_config_keys_are_validated():
    assert parse(config_text()).dashboard == {"enabled": True, "sample_s": 5.0, "points": 720}
    with pytest.raises(ConfigError) as e:
        parse(config_text() + '\n[dashboard]\nenabled = "yes"\nport = 8080\npoints = 1\n')
    text = "\n".join(e.value.problems)
    assert "dashboard.enabled: expected true/false" in text and "dashboard.port: unknown key" in text
    assert "dashboard.points: must be >= 10" in text


def test_proxy_default_socket_is_the_units():
    assert f"{DEFAULT_RUNTIME_DIR}/{SOCKET_NAME}" == bot_paths.DASHBOARD_SOCKET
    assert DEFAULT_RUNTIME_DIR == bot_paths.RUNTIME_DIR


# ---- deploy/tunnel.py on its own: a byte pipe, concurrent, closing cleanly ---------------------

def _echo(port: int, payload: bytes) -> bytes:
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
        sender.join()
        return bytes(got)


def test_tunnel_pipes_each_connection_both_ways_to_its_own_stream():
    opened = []

    def opener():
        opened.append(ProcessStream(["cat"]))
        return opened[-1]

    with Tunnel(opener) as t:
        payloads = [os.urandom(1 << 20), os.urandom(3 << 19), b"x"]
        results = [None] * len(payloads)
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _echo(t.port, payloads[i])))
                   for i in range(len(payloads))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert results == payloads
        assert len(opened) == 3
    time.sleep(0.2)
    assert all(s.proc.poll() is not None for s in opened), "a stream's process outlived its connection"


def test_tunnel_stop_cuts_open_connections_and_a_failing_opener_fails_only_its_connection():
    import socket
    calls = []

    def opener():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("ssh: connect to host refused")
        return ProcessStream(["cat"])

    t = Tunnel(opener).start()
    with socket.create_connection(("127.0.0.1", t.port), timeout=10) as s:
        assert s.recv(10) == b""                    # the first connection's remote failed: closed
    s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    s.sendall(b"ping")
    assert s.recv(10) == b"ping"                    # the tunnel is still up for the next one
    t.stop()
    assert s.recv(10) == b""                        # stop() cut the open connection
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", t.port), timeout=2).close()
    with pytest.raises(ValueError):
        Tunnel(opener, host="0.0.0.0")


def test_tunnel_wait_returns_on_ctrl_c_and_closes_the_port():
    import signal
    import socket
    import sys
    # The child says "waiting" from wait()'s first sleep: a Ctrl-C sent as soon as the port is printed
    # can land before wait() is entered, where nothing catches it (a CI run and a loop here saw it).
    code = ("import threading, time\n"
            "from deploy.tunnel import ProcessStream, Tunnel\n"
            "real_sleep = time.sleep\n"
            "def sleep(s):\n"
            "    if threading.current_thread() is threading.main_thread() and not getattr(sleep, 'said', 0):\n"
            "        sleep.said = 1\n"
            "        print('waiting', flush=True)\n"
            "    real_sleep(s)\n"
            "time.sleep = sleep\n"
            "t = Tunnel(lambda: ProcessStream(['cat'])).start()\n"
            "print(t.port, flush=True)\nt.wait()\nprint('stopped', flush=True)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(p.stdout.readline())
        assert p.stdout.readline().strip() == "waiting"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"hi")
            assert s.recv(10) == b"hi"
            p.send_signal(signal.SIGINT)
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0 and out.strip() == "stopped"
            assert s.recv(10) == b""                # the open connection was cut
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---- the server in-process: errors of the status view, the curve's bound -------------------------

def _unix_get(path, target: str) -> tuple[int, bytes]:
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_failing_status_is_a_503_and_the_curve_keeps_only_the_last_points(tmp_path):
    from hardkit_bot.dashboard import DashboardServer
    from hardkit_bot.metrics import render
    failing = threading.Event()
    n = iter(range(10**6))
    good = {"state": "ACTIVE", "reason": "r", "equity": "100.00", "exposure": "0.00", "open_orders": [],
            "limits": [], "steps": 1}

    def status():
        if failing.is_set():
            raise RuntimeError("ledger locked")
        return {**good, "equity": f"{100 + next(n)}.00"}

    srv = DashboardServer(tmp_path / "d.sock", status, sample_s=0.05, points=10)
    srv.start()
    try:
        _wait_until(lambda: len(srv.curve.points()) == 10 and srv.curve.points()[0][1] > 110)   # > 20 samples taken
        pts = srv.curve.points()
        assert len(pts) == 10 and [p[1] for p in pts] == sorted(p[1] for p in pts)
        code, body = _unix_get(tmp_path / "d.sock", "/metrics")
        assert code == 200 and body.decode().startswith(render(good).splitlines()[0])
        failing.set()
        code, body = _unix_get(tmp_path / "d.sock", "/metrics")
        assert code == 503 and json.loads(body)["error"] == "RuntimeError: ledger locked"
        time.sleep(0.3)   # the sampler survives failures
        failing.clear()
        before = srv.curve.points()[-1]
        _wait_until(lambda: srv.curve.points()[-1] != before)
        assert _unix_get(tmp_path / "d.sock", "/api/status")[0] == 200
    finally:
        srv.stop()
    assert not (tmp_path / "d.sock").exists()


def _wait_until(pred, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)
