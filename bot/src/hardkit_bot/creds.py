"""Exchange credentials from systemd's $CREDENTIALS_DIRECTORY, and log redaction.

Keys are read from the files `exchange-api-key` and `exchange-api-secret`
(systemd-creds decrypts them into a private tmpfs for this service only). They
are never read from the config file, argv or the environment. `Secret` hides
its value from repr/str, and `install_redaction` scrubs any secret value that
still reaches a log record (e.g. inside an exception message from a library).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

KEY_FILE = "exchange-api-key"
SECRET_FILE = "exchange-api-secret"
#: The audit chain's HMAC key: raw random bytes generated on the host (audit.MIN_KEY_BYTES or more).
AUDIT_KEY_FILE = "audit-key"


class CredentialError(Exception):
    pass


class Secret:
    __slots__ = ("_v",)

    def __init__(self, value: str):
        self._v = value

    def reveal(self) -> str:
        return self._v

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


def load(directory: str | None = None) -> tuple[Secret, Secret]:
    d = directory or os.environ.get("CREDENTIALS_DIRECTORY")
    if not d:
        raise CredentialError("CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredentialEncrypted= "
                              f"for {KEY_FILE} and {SECRET_FILE}")
    out = []
    for name in (KEY_FILE, SECRET_FILE):
        p = Path(d) / name
        try:
            v = p.read_text().strip()
        except OSError as e:
            raise CredentialError(f"cannot read credential {name}: {e.strerror}") from None
        if not v:
            raise CredentialError(f"credential {name} is empty")
        out.append(Secret(v))
    return out[0], out[1]


def load_audit_key(path: str | None = None) -> bytes | None:
    """The audit key from `path` (--audit-key-file, development and tests), else from
    $CREDENTIALS_DIRECTORY/audit-key; None when neither exists (the chain is then unkeyed)."""
    from .audit import MIN_KEY_BYTES
    if path is None:
        d = os.environ.get("CREDENTIALS_DIRECTORY")
        if not d or not (Path(d) / AUDIT_KEY_FILE).exists():
            return None
        path = str(Path(d) / AUDIT_KEY_FILE)
    try:
        key = Path(path).read_bytes()
    except OSError as e:
        raise CredentialError(f"cannot read the audit key {path}: {e.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise CredentialError(f"the audit key {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key


class _Redact(logging.Filter):
    def __init__(self, values: list[str]):
        super().__init__()
        self.values = [v for v in values if len(v) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(v in msg for v in self.values):
            for v in self.values:
                msg = msg.replace(v, "***")
            record.msg, record.args = msg, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if any(v in text for v in self.values):
                record.exc_info = None
                record.msg = f"{record.msg} (exception text redacted: it contained a credential)"
        return True


def install_redaction(*secrets: Secret) -> None:
    f = _Redact([s.reveal() for s in secrets])
    for h in logging.getLogger().handlers:
        h.addFilter(f)
