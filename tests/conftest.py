"""Test-run ordering shared by every tier.

`make test` runs modules in parallel (pytest-xdist, `--dist loadfile --no-loadscope-reorder`): each
module goes whole to one worker, in collection order, as workers free up. Handing out the slowest
modules first (the vm tier, then the lab modules, then the unit tests that fill the gaps) keeps a
long module from starting last and stretching the run.
"""

from __future__ import annotations


def _tier(item) -> int:
    marks = {m.name for m in item.iter_markers()}
    if "vm" in marks:
        return 0
    if "lab" in marks:
        return 1
    return 2


def pytest_collection_modifyitems(config, items):
    # A module is as slow as its slowest test: rank whole modules, keep the order inside each.
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        rank[module] = min(rank.get(module, 2), _tier(item))
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])
