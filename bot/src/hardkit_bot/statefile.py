"""The latch's second copy: a small fsynced, checksummed file beside the ledger.

Why: the ledger is SQLite in WAL mode. A state change that lives only in the `-wal`
is gone when the `-wal` is damaged or deleted, and SQLite then shows an older (or a
fresh, ACTIVE) state without complaint. So every latched-state change is checkpointed
into the main database *and* written here (temp file, fsync, atomic rename, fsync of
the directory). At start the two copies are compared (`Store.latch_doubt`); any
disagreement, a damaged or missing file boots HALTED, never ACTIVE.

The checksum detects damage, not a deliberate edit: the keyed audit chain does that.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

#: `ledger.sqlite` -> `ledger.sqlite.state`
SUFFIX = ".state"


class StateFileError(Exception):
    """The file exists but cannot be trusted (unreadable, not our format, checksum mismatch)."""


@dataclass(frozen=True)
class Latch:
    state: str
    reason: str
    since: float


def path_for(ledger: str | Path) -> Path:
    return Path(f"{ledger}{SUFFIX}")


def _body(latch: Latch) -> str:
    return json.dumps({"state": latch.state, "reason": latch.reason, "since": latch.since},
                      sort_keys=True, separators=(",", ":"))


def write(path: Path, latch: Latch) -> None:
    """Replace the file atomically and durably (a crash leaves the old or the new copy)."""
    body = _body(latch)
    text = json.dumps({"latch": json.loads(body), "sha256": hashlib.sha256(body.encode()).hexdigest()}) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read(path: Path) -> Latch | None:
    """The recorded latch, None when there is no file; StateFileError when it cannot be trusted."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"cannot read {path.name}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
        latch = Latch(str(doc["latch"]["state"]), str(doc["latch"]["reason"]), float(doc["latch"]["since"]))
        ok = hashlib.sha256(_body(latch).encode()).hexdigest() == doc["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise StateFileError(f"{path.name} is damaged ({type(e).__name__})") from None
    if not ok:
        raise StateFileError(f"{path.name} is damaged (checksum mismatch)")
    return latch
