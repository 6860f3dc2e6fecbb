"""How `make test` spreads the suite over pytest-xdist workers (`-n 2 --dist loadgroup`).

Each test module is one group (its module-scoped lab stays on one worker); every vm-tier test is
in one `vm` group, run first: the software-CPU VMs keep one core busy for most of the run while
the other worker goes through the nspawn tier and the unit tests. Without xdist this only orders
the vm tests first.
"""

from __future__ import annotations

import pytest

#: The xdist group of every vm-tier test.
VM_GROUP = "vm"


def _group(item) -> str:
    return VM_GROUP if item.get_closest_marker("vm") else item.module.__name__


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    items.sort(key=lambda item: _group(item) != VM_GROUP)  # stable: the rest keeps its order
