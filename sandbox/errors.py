"""The one error type the lab raises for conditions an operator can fix.

The CLI prints its message and exits non-zero instead of showing a traceback.
"""


class LabError(Exception):
    """A lab precondition failed (not root, a tool missing, a target not found...)."""
