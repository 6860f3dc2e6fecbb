"""Inventory data keys: each role declares the keys it reads, with default, meaning and check.

This is the one place a data default is written. Roles read values through `value()`, the
inventory validator checks every key of every host against the declared checks before any
host is touched, and the compliance checks read the same defaults to know what to expect.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class DataKey:
    name: str
    default: Any
    doc: str
    check: Check = field(default=lambda v: None)
    required: bool = False

    def value(self, data) -> Any:
        """The host's value for this key, or the documented default."""
        got = data.get(self.name) if isinstance(data, dict) else getattr(data, self.name, None)
        return self.default if got is None else got


# --- checks: return a message saying what is wrong, or None -------------------------------------

USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def is_bool(v) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, not {v!r}"


def is_count(v) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return None if ok else f"must be a whole number >= 0, not {v!r}"


def is_port(v) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        return f"must be a TCP port number 1-65535, not {v!r}"
    return None


def is_username(v) -> str | None:
    if not isinstance(v, str) or not USERNAME_RE.match(v):
        return f"must be a valid Linux user name (lowercase, starts with a letter or _), not {v!r}"
    return None


def is_admin_username(v) -> str | None:
    return is_username(v) or ("must not be root: the admin is a named, unprivileged user with sudo"
                              if v == "root" else None)


def is_network_list(v) -> str | None:
    if not isinstance(v, (list, tuple)) or not v:
        return f"must be a non-empty list of IPv4/IPv6 addresses or CIDRs, not {v!r}"
    bad = []
    for item in v:
        try:
            ipaddress.ip_network(str(item), strict=True)
        except ValueError as e:
            bad.append(f"{item!r} ({e})")
    return ("has malformed entries: " + "; ".join(bad)) if bad else None


def is_public_key_list(v) -> str | None:
    """Each entry is an OpenSSH public key line, or the path of a file holding one."""
    if not isinstance(v, (list, tuple)) or not v:
        return f"must be a non-empty list of public keys or .pub file paths, not {v!r}"
    problems = []
    for item in v:
        try:
            read_public_key(item)
        except ValueError as e:
            problems.append(str(e))
    return "; ".join(problems) or None


PUBKEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh.com|"
                       r"sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/=]+( .*)?$")


def read_public_key(item: str) -> str:
    """The key line for an inventory entry (literal key, or path to a .pub file)."""
    if not isinstance(item, str):
        raise ValueError(f"{item!r} is not a string")
    text = item.strip()
    if not PUBKEY_RE.match(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"{item!r} is neither a public key nor an existing key file")
        text = path.read_text().strip()
        if not PUBKEY_RE.match(text):
            raise ValueError(f"{item!r} does not hold an OpenSSH public key")
        if "PRIVATE KEY" in text:
            raise ValueError(f"{item!r} is a private key: list the .pub file")
    return text


def is_existing_file(v) -> str | None:
    if not isinstance(v, str) or not Path(v).expanduser().is_file():
        return f"must be the path of an existing file, not {v!r}"
    return None


def one_of(*choices) -> Check:
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}, not {v!r}"
    return check


def is_dict(v) -> str | None:
    return None if isinstance(v, dict) else f"must be a dict, not {v!r}"
