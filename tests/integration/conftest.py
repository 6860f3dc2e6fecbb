"""Integration tests run against real lab targets: they need root and the built lab image."""

from __future__ import annotations

import os

import pytest

from sandbox import image


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "needs root: the lab creates namespaces, mounts and containers"
    elif not image.is_built():
        reason = "needs the lab image: run `hardkit sandbox image` (CI builds it before the tests)"
    if reason:
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))
