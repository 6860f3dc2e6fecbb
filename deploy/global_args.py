"""pyinfra's list of global operation arguments, read once per run instead of once per call.

pyinfra's `all_global_arguments()` evaluates `typing.get_type_hints(AllArguments)` (some 30 string
annotations) every time it is called: once per operation per host when the operation's arguments
are collected (`pop_global_arguments`) and once per fact read (`_handle_fact_kwargs`). On a no-op
redeploy of 12 lab hosts that was ~5,600 evaluations of the same class, the largest single cost in
a cProfile of the controller (bench/fleet_noop.py measures the controller's CPU). The class and its
annotations never change within a process, so the answer is computed once and each caller gets a
fresh list of the same pairs: what they receive is equal to what pyinfra computes, and nothing on a
host is cached. Installed by `deploy/site.py`.
"""

from __future__ import annotations


def install() -> None:
    """Replace `all_global_arguments` where pyinfra looks it up (its module and facts.py); idempotent."""
    from pyinfra.api import arguments, facts

    if getattr(arguments, "_hardkit_read_once", False):
        return
    computed = tuple(arguments.all_global_arguments())

    def all_global_arguments() -> list[tuple[str, type]]:
        return list(computed)

    arguments.all_global_arguments = facts.all_global_arguments = all_global_arguments
    arguments._hardkit_read_once = True
