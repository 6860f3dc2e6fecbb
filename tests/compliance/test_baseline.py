"""Baseline: the host is what hardkit expects to manage, and it is healthy."""

import pytest

from roles.baseline import HARDKIT_RELEASE, RELEASE_FILE


@pytest.mark.control("hk-base-01")
def test_debian_12(target):
    """The host runs Debian 12 (bookworm)"""
    release = target.check_output("cat /etc/os-release")
    assert 'VERSION_ID="12"' in release, release


@pytest.mark.control("hk-base-02")
def test_release_marker(target):
    """The host was converged by this hardkit release"""
    marker = target.host.file(RELEASE_FILE)
    assert marker.exists, f"{RELEASE_FILE} missing: the host was never deployed"
    assert marker.user == "root" and marker.mode == 0o644
    assert f"HARDKIT_RELEASE={HARDKIT_RELEASE}" in marker.content_string


@pytest.mark.control("hk-base-03")
def test_no_failed_units(target):
    """systemd reports no failed units"""
    lines = target.check_output("systemctl list-units --state=failed --no-legend --plain").splitlines()
    failed = [line.split()[0] for line in lines if line.strip()]
    assert not failed, f"failed units: {', '.join(failed)}"
