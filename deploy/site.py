"""The pyinfra entry point: every role, in order, for every host of the inventory.

Run through `hardkit deploy INVENTORY` (which picks the login and checks the lockout rules
first), or directly as `pyinfra INVENTORY deploy/site.py` from the repository root.
"""

import importlib

from roles import ROLE_MODULES

for _module in ROLE_MODULES:
    _role = importlib.import_module(_module)
    _apply = getattr(_role, "apply", None)
    if _apply is not None:
        _apply()
