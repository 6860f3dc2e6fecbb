"""The pyinfra entry point: every role, in order, for every host of the inventory.

Run through `hardkit deploy INVENTORY` (which picks the login and checks the lockout rules
first), or directly as `pyinfra --config deploy/pyinfra_config.py INVENTORY deploy/site.py` from the
repository root.
"""

import importlib
import os

from deploy import fact_batch, global_args, host_times, op_order
from roles import ROLE_MODULES


#: HARDKIT_PLAIN_PYINFRA=1 runs pyinfra as it comes (one round-trip per fact): for the bench's
#: before/after figure, or to rule the batch out when something looks wrong.
if os.environ.get("HARDKIT_PLAIN_PYINFRA") != "1":
    fact_batch.install()  # every fact of a host in one round-trip, asked live (see deploy/fact_batch.py)
    op_order.install()  # pyinfra's operation order without reading every frame's source
    global_args.install()  # pyinfra's global-argument types evaluated once, not per operation and fact

host_times.install()  # when each host ran each operation, for `hardkit deploy --json`

for _module in ROLE_MODULES:
    _role = importlib.import_module(_module)
    _apply = getattr(_role, "apply", None)
    if _apply is not None:
        _apply()
