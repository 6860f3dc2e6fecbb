"""The pre-flight's login stays open for the credential delivery (one login per host before pyinfra's),
and is closed once that is done; a connection that dropped meanwhile is replaced, not used."""

from __future__ import annotations

import pytest

from deploy import connect, credentials
from deploy.inventory import Host


class _Client:
    def __init__(self, active=True):
        self.active, self.closed, self.commands = active, False, []

    def exec_command(self, command, timeout=None):
        self.commands.append(command)
        out = type("Out", (), {"read": lambda s: b"192.0.2.9 5000 192.0.2.1 22\n",
                               "channel": type("C", (), {"recv_exit_status": lambda s: 0})()})()
        return None, out, type("Err", (), {"read": lambda s: b""})()

    def get_transport(self):
        return type("T", (), {"is_active": lambda s: self.active and not self.closed})()

    def close(self):
        self.closed = True


@pytest.fixture
def host():
    return Host(name="h1", groups=[], data={"ssh_host": "192.0.2.1", "admin_user": "ops"})


def test_resolve_keeps_the_working_login_open_only_when_asked(monkeypatch, host):
    opened = []
    monkeypatch.setattr(connect, "open_client", lambda h, user, port: opened.append(_Client()) or opened[-1])
    login = connect.resolve(host)
    assert login.client is None and opened[-1].closed
    kept = connect.resolve(host, keep=True)
    assert kept.client is opened[-1] and not kept.client.closed and kept.client_address == "192.0.2.9"
    assert "sudo -n true" in opened[-1].commands[0]
    kept.close()
    assert opened[-1].closed and kept.client is None


def test_the_credential_session_uses_the_kept_connection_and_leaves_it_open(monkeypatch, host):
    monkeypatch.setattr(connect, "open_client", lambda *a, **k: pytest.fail("a second login"))
    client = _Client()
    login = connect.Login("h1", "ops", True, "192.0.2.9", 22, 22, client)
    session = credentials._Session(host, login)
    assert session.client is client
    session.close()
    assert not client.closed


def test_a_kept_connection_that_dropped_is_replaced_by_a_new_login(monkeypatch, host):
    fresh = _Client()
    monkeypatch.setattr(connect, "open_client", lambda *a, **k: fresh)
    login = connect.Login("h1", "ops", True, "192.0.2.9", 22, 22, _Client(active=False))
    session = credentials._Session(host, login)
    assert session.client is fresh
    session.close()
    assert fresh.closed
