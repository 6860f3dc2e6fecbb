"""pyinfra's operation order, computed from raw frames instead of `inspect.stack()`.

In CLI mode pyinfra orders (and hashes) each operation by the line numbers of the call stack
that added it, read through `inspect.stack()`, which also loads every frame's source text. With
~120 operations and deep stacks that was most of a no-op redeploy's controller CPU (measured by
bench/noop_profile.py). `order_from_stack` returns the same numbers — the lines below the first
frame of the deploy file, skipping pyinfra's own frames — from `frame.f_code.co_filename` and
`frame.f_lineno`, which is what `inspect.getframeinfo` reports for them. Installed by
`deploy/site.py`.
"""

from __future__ import annotations

import sys


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
    numbers += [f.f_lineno for f in frames[start:] if not f.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)]
    return numbers


def install() -> None:
    import importlib

    # The module, not the `operation` decorator that pyinfra.api also exports under that name.
    importlib.import_module("pyinfra.api.operation").get_operation_order_from_stack = order_from_stack
