"""A login that authenticates and then loses its session is a "no" for that login, not a traceback.

Seen on the lab: sshd reloading right after a guarded port move closed the session the admin had just
opened, and `connect.resolve` crashed instead of trying the next login.
"""

from __future__ import annotations

import paramiko
import pytest

from deploy import connect
from deploy.inventory import Host


class _ClosedAfterAuth:
    """What paramiko returns when the server ends the connection right after authentication."""

    def exec_command(self, command, timeout=None):
        raise paramiko.SSHException("SSH session not active")

    def close(self):
        pass


@pytest.fixture
def host():
    return Host(name="h1", groups=[], data={"ssh_host": "192.0.2.1", "admin_user": "ops"})


def test_a_session_closed_after_auth_is_a_no_with_its_reason(monkeypatch, host):
    monkeypatch.setattr(connect, "open_client", lambda h, user, port: _ClosedAfterAuth())
    login, why = connect._try(host, "ops", True, 22, 22)
    assert login is None and "logged in, then the session failed: SSH session not active" in why


def test_resolve_goes_on_to_the_next_login_and_says_why_none_worked(monkeypatch, host):
    monkeypatch.setattr(connect, "open_client", lambda h, user, port: _ClosedAfterAuth())
    with pytest.raises(connect.LoginError) as e:
        connect.resolve(host)
    assert str(e.value).count("the session failed") >= 2, e.value   # admin and bootstrap both tried
