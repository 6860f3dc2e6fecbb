"""deploy/op_order.py gives pyinfra's operation order exactly as pyinfra computes it."""

from __future__ import annotations

from types import SimpleNamespace

import pyinfra
from pyinfra.api.util import get_operation_order_from_stack

from deploy.op_order import order_from_stack


def both(state):
    return [f(state) for f in (get_operation_order_from_stack, order_from_stack)]


def nested(state, depth):
    return nested(state, depth - 1) if depth else both(state)


def test_same_numbers_as_pyinfra_from_any_depth(monkeypatch):
    for is_cli in (False, True):
        monkeypatch.setattr(pyinfra, "is_cli", is_cli)
        for deploy_file in (None, __file__):
            state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
            for depth in (0, 3):
                theirs, ours = nested(state, depth)
                assert ours == theirs and ours
