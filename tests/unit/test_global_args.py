"""deploy/global_args.py: pyinfra's global operation arguments read once give what pyinfra computes."""

from __future__ import annotations

import typing

from pyinfra.api import Config, Inventory, State, arguments, facts

from deploy import global_args


def _collected(state, host, kwargs):
    return arguments.pop_global_arguments(state, host, dict(kwargs))


def test_read_once_gives_the_same_arguments_to_operations_and_facts():
    inventory = Inventory((["h1"], {}), sudo_group=(["h1"], {"_sudo": True, "_sudo_user": "root"}))
    state = State(inventory, Config())
    host = inventory.get_host("h1")
    kwargs = {"_chdir": "/tmp", "_env": {"A": "1"}, "_success_exit_codes": [0, 1], "name": "x"}
    before = _collected(state, host, kwargs)
    global_args.install()
    global_args.install()  # idempotent
    assert arguments.all_global_arguments() == list(typing.get_type_hints(arguments.AllArguments).items())
    assert facts.all_global_arguments is arguments.all_global_arguments
    assert _collected(state, host, kwargs) == before
    assert before[0]["_sudo"] is True and before[0]["_chdir"] == "/tmp" and "_chdir" in before[1]
    listed = arguments.all_global_arguments()
    listed.clear()  # a caller changing its list changes no other caller's
    assert arguments.all_global_arguments()
