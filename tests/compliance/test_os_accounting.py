"""Process accounting: acct is on and the kernel writes a record for each process that ends."""

from __future__ import annotations

import pytest

from roles import accounting as role
from tests.compliance import os_state


@pytest.mark.control("hk-os-pacct-01")
def test_process_accounting_records(target):
    """Process accounting is on and recording (acct), wherever the kernel grants it (CAP_SYS_PACCT)"""
    if not target.check_output(role.CAN_ACCOUNT_COMMAND).strip():
        target.require_kernel("process accounting", "whose manager withholds CAP_SYS_PACCT: the kernel refuses "
                                                    "to account there, so the deploy leaves acct out")
        pytest.fail("this host withholds CAP_SYS_PACCT but is no container: the kernel refuses accounting",
                    pytrace=False)
    unit = os_state.units(target, [role.SERVICE])[role.SERVICE]
    assert unit.get("UnitFileState") == "enabled" and unit.get("ActiveState") == "active", unit
    # In force: a process that ends adds a record (the file grows).
    sizes = target.check_output(f"stat -c %s {role.PACCT_FILE}; /bin/true; sleep 1; "
                                f"stat -c %s {role.PACCT_FILE}").split()
    assert len(sizes) == 2 and int(sizes[1]) > int(sizes[0]), f"{role.PACCT_FILE} did not grow: {sizes}"
