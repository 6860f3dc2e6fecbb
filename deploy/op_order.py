"""pyinfra's operation order, computed from raw frames instead of `inspect.stack()`.

In CLI mode pyinfra orders (and hashes) each operation by the line numbers of the call stack
that added it, read through `inspect.stack()`, which also loads every frame's source text. With
~120 operations and deep stacks that was most of a no-op redeploy's controller CPU (measured by
bench/noop_profile.py). `order_from_stack` returns the same numbers — the lines below the first
frame of the deploy file, skipping pyinfra's own frames — from `frame.f_code.co_filename` and
`frame.f_lineno`, which is what `inspect.getframeinfo` reports for them. Installed by
`deploy/site.py`.

One difference, on purpose: each line number is preceded by its file's rank. site.py calls every
role from the same line, so pyinfra's numbers alone give an operation at line 50 of roles/ssh.py
and one at line 50 of roles/backup.py the same order, hence the same operation hash. One host never
notices; two hosts whose roles differ (a VPS and its backup server in one run) share that hash
across different operations and pyinfra stops with "Cycle detected in operation ordering DAG".
Role modules rank by their place in ROLE_MODULES (the order they run in); any other file by a
stable number from its path, above every role's, so no two files share a rank.
"""

from __future__ import annotations

import hashlib
import sys
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=None)
def _role_ranks() -> dict[str, int]:
    from roles import ROLE_MODULES

    return {str(REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")): i + 1
            for i, module in enumerate(ROLE_MODULES)}


@lru_cache(maxsize=None)
def file_rank(filename: str) -> int:
    """Where a file's operations sort: a role by its place in the run, any other file after all roles."""
    ranks = _role_ranks()
    if filename in ranks:
        return ranks[filename]
    return len(ranks) + 1 + int(hashlib.sha256(filename.encode()).hexdigest()[:8], 16)


def order_from_stack(state) -> list[int]:
    import pyinfra
    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()  # outermost first, as pyinfra reads the reversed stack
    start = 0
    if state.current_deploy_filename:
        for start, f in enumerate(frames):
            if f.f_code.co_filename == state.current_deploy_filename:
                break
    numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    for f in frames[start:]:
        if not f.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR):
            numbers += [file_rank(f.f_code.co_filename), f.f_lineno]
    return numbers


def install() -> None:
    import importlib

    # The module, not the `operation` decorator that pyinfra.api also exports under that name.
    importlib.import_module("pyinfra.api.operation").get_operation_order_from_stack = order_from_stack
