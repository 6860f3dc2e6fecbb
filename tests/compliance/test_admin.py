"""The admin account: key-only, exactly the inventory's keys, sudo through a validated rule."""

from __future__ import annotations

import pytest

from roles.admin import SSH_GROUP, SUDOERS_FILE, admin_authorized_keys_text, sudoers_text


@pytest.mark.control("hk-admin-01")
def test_admin_account(target):
    """The named admin exists, is in the SSH group, and its password is locked"""
    admin = target.data["admin_user"]
    user = target.host.user(admin)
    assert user.exists and SSH_GROUP in user.groups
    assert target.check_output(f"passwd -S {admin}").split()[1] == "L"


@pytest.mark.control("hk-admin-02")
def test_admin_authorized_keys(target):
    """The admin's authorized_keys holds exactly the inventory's keys (from= the controllers with 2FA), private"""
    admin = target.data["admin_user"]
    f = target.host.file(f"/home/{admin}/.ssh/authorized_keys")
    assert (f.user, f.mode) == (admin, 0o600)
    assert f.content_string == admin_authorized_keys_text(target.data)


@pytest.mark.control("hk-admin-03")
def test_sudo_rule(target):
    """The sudo rule is hardkit's, valid, root-owned and read-only"""
    f = target.host.file(SUDOERS_FILE)
    assert (f.user, f.group, f.mode) == ("root", "root", 0o440)
    assert f.content_string == sudoers_text(target.data["admin_user"])
    assert target.run("visudo -c").rc == 0


@pytest.mark.control("hk-admin-04")
def test_root_has_no_password_and_no_ssh_group(target):
    """root cannot log in with a password and is not allowed over SSH"""
    assert target.check_output("passwd -S root").split()[1] == "L"
    assert SSH_GROUP not in target.host.user("root").groups
