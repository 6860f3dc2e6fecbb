"""Helpers of the dashboard tests: a paper bot with its sockets in a runtime dir, the
controller's tunnel to it through a real `hardkit-bot dashboard-proxy`, an HTTP GET."""
from __future__ import annotations

import http.client
import os
from contextlib import contextmanager
from pathlib import Path

from bot_helpers import BOT, BOT_SRC, config_text

from deploy.tunnel import ProcessStream, Tunnel


def start_bot(bot, dashboard: str = "sample_s = 0.2", **cfg) -> Path:
    """Start a paper bot whose control.sock and dashboard.sock live in tmp/rt; return that dir."""
    rt = bot.tmp / "rt"
    bot.write_config(config_text(**cfg) + f"\n[dashboard]\n{dashboard}\n")
    bot.start("--runtime-dir", str(rt))
    bot.wait_for((rt / "control.sock").exists, what="control socket")
    return rt


def proxy_argv(rt: Path) -> list[str]:
    return [*BOT, "dashboard-proxy", "--runtime-dir", str(rt)]


def proxy_env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [BOT_SRC, e.get("PYTHONPATH")]))
    return e


@contextmanager
def tunnel_to(rt: Path):
    """deploy/tunnel.py on an ephemeral loopback port, each connection a fresh local dashboard-proxy."""
    env = proxy_env()
    with Tunnel(lambda: ProcessStream(proxy_argv(rt), env=env)) as t:
        yield t


def get(port: int, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()

