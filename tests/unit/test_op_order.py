"""deploy/op_order.py gives pyinfra's operation order, each line number ranked by its file."""

from __future__ import annotations

from types import SimpleNamespace

import pyinfra
from pyinfra.api.util import get_operation_order_from_stack

from deploy.op_order import REPO_ROOT, file_rank, order_from_stack
from roles import ROLE_MODULES


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
                head = 1 if is_cli else 0
                assert ours[:head] == theirs[:head]
                assert ours[head + 1::2] == theirs[head:] and theirs[head:], "the same line numbers as pyinfra's"
                assert all(rank > 0 for rank in ours[head::2])


def _order_at_line(module: str, line: int) -> list[int]:
    """The order of an operation added at `line` of a role module (code compiled under that file's name)."""
    path = str(REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py"))
    code = compile("\n" * (line - 1) + "result = order(state)\n", path, "exec")
    scope = {"order": order_from_stack, "state": SimpleNamespace(current_deploy_filename=None, current_op_file_number=0)}
    exec(code, scope)
    return scope["result"]


def test_operations_at_the_same_line_of_two_roles_differ_and_follow_the_role_order():
    """pyinfra's numbers alone gave both the same hash: two hosts with different roles then made a cycle."""
    early, late = "roles.ssh", "roles.backup"
    assert ROLE_MODULES.index(early) < ROLE_MODULES.index(late)
    first, second = _order_at_line(early, 50), _order_at_line(late, 50)
    assert first != second and first < second
    assert file_rank(__file__) > len(ROLE_MODULES), "a helper file ranks after every role"
