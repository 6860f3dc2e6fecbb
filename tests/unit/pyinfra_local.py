"""A pyinfra state on @local (its local connector runs the same command path the SSH one does), for
unit tests that run real operations and facts against this machine."""

from __future__ import annotations


def local_state():
    """A connected pyinfra State whose one host is @local; (state, host)."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all

    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    return state, state.inventory.get_host("@local")


def run_all(state) -> None:
    """Run the state's operations; a failed host is left in state.results (pyinfra raises when every host
    failed, which these one-host tests read from the results instead)."""
    from pyinfra.api.operations import run_ops

    try:
        run_ops(state)
    except Exception:
        pass
