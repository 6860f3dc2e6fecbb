"""linux-baseline package-07 asks for a syslog daemon; hardkit keeps logs in the journal (waived)."""

import pytest

from tests.compliance import os_state


@pytest.mark.control("package-07")
def test_package_07_syslog(target):
    """A syslog server package is installed"""
    assert {"rsyslog", "syslog-ng"} & set(os_state.packages(target)), "no syslog daemon installed"
