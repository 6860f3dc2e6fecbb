"""Thresholds for the external auditors `hardkit audit` runs (tests/compliance/test_external_audit.py).

They are data, not a role: nothing is deployed for them. Each is an inventory key so that an
operator can tighten or (with a reason in the review) relax one host without touching the checks.
"""

from __future__ import annotations

from roles.data import DataKey, is_count


def _is_exposure(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 10
    return None if ok else f"must be a number from 0 to 10 (systemd-analyze security's scale), not {v!r}"


SSH_AUDIT_POLICY = "Hardened Debian 12 (version 3)"

SSH_AUDIT_MAX_WARNINGS = DataKey(
    "audit_ssh_max_warnings", 0,
    f"ssh-audit warnings allowed (its policy '{SSH_AUDIT_POLICY}' must pass as well).", is_count)

UNIT_MAX_EXPOSURE = DataKey(
    "audit_unit_max_exposure", 2.0,
    "Highest `systemd-analyze security` exposure allowed for a unit hardkit installs (the bot has its own, "
    "lower limit: roles/bot.py MAX_EXPOSURE).", _is_exposure)

def _is_index(v) -> str | None:
    ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100)
    return None if ok else f"must be a Lynis hardening index 0-100 (or unset for the default), not {v!r}"


LYNIS_MIN_INDEX = DataKey(
    "audit_lynis_min_index", None,
    "Lowest Lynis hardening index accepted; unset: 85 on a host declared a container, 90 otherwise "
    "(a container cannot harden the provider's kernel).", _is_index)
LYNIS_DEFAULT_INDEX = {True: 85, False: 90}

KEYS = [SSH_AUDIT_MAX_WARNINGS, UNIT_MAX_EXPOSURE, LYNIS_MIN_INDEX]


def lynis_min_index(data) -> int:
    from roles.platform_data import CONTAINER

    chosen = LYNIS_MIN_INDEX.value(data)
    return LYNIS_DEFAULT_INDEX[bool(CONTAINER.value(data))] if chosen is None else chosen
