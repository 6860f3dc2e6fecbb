"""What kind of machine a host is: the one fact the compliance verdict needs from the operator.

On a container VPS (LXC/OpenVZ offers) the kernel, its audit subsystem and the clock belong to
the provider's host, so their controls cannot be shown from inside. The operator declares it;
verify then reports those controls as NOT VERIFIED (with what could not be checked and why)
instead of failing them. A host that turns out to be a container without the declaration fails
them: an undeclared container is a surprise an auditor must see.
"""

from __future__ import annotations

from roles.data import DataKey, is_bool

CONTAINER = DataKey(
    "container", False,
    "True when the host is a container (LXC/OpenVZ VPS, the lab's nspawn tier): its kernel, audit and "
    "clock belong to the provider, so verify reports those controls as NOT VERIFIED instead of failing them.",
    is_bool)

KEYS = [CONTAINER]
