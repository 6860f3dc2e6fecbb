"""Which control ids the compliance checks prove: a pytest plugin used at collection time only.

`pytest --collect-only -p tests.compliance.control_index --hardkit-control-index FILE ...`
writes {control id: [{module, check, title}]} so the catalog can be compared with the checks
(tests/unit/test_catalog.py) without connecting to any host.
"""

from __future__ import annotations

import json
from pathlib import Path


def pytest_addoption(parser):
    parser.addoption("--hardkit-control-index", default=None, help="write the collected control ids here (JSON)")


def pytest_collection_finish(session):
    out = session.config.getoption("--hardkit-control-index")
    if not out:
        return
    index: dict[str, list[dict]] = {}
    for item in session.items:
        marker = item.get_closest_marker("control")
        if marker is None:
            continue
        doc = (getattr(item.function, "__doc__", None) or "").strip().splitlines()
        check = {"module": item.module.__name__.rsplit(".", 1)[-1], "check": item.originalname,
                 "title": doc[0] if doc else item.originalname}
        if check not in index.setdefault(marker.args[0], []):
            index[marker.args[0]].append(check)
    Path(out).write_text(json.dumps(index, indent=1, sort_keys=True))
