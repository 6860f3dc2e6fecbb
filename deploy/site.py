"""The pyinfra entry point: every role, in order, for every host of the inventory.

Run through `hardkit deploy INVENTORY` (which picks the login and checks the lockout rules
first), or directly as `pyinfra INVENTORY deploy/site.py` from the repository root.
"""

import importlib

from deploy import fact_batch, op_order
from roles import ROLE_MODULES

fact_batch.install()  # every fact of a host in one round-trip, asked live (see deploy/fact_batch.py)
op_order.install()  # pyinfra's operation order without reading every frame's source

for _module in ROLE_MODULES:
    _role = importlib.import_module(_module)
    _apply = getattr(_role, "apply", None)
    if _apply is not None:
        _apply()
