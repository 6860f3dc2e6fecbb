"""Append-only, keyed, hash-chained audit log (a table in the ledger).

Each record's MAC is HMAC-SHA256, keyed with the `audit-key` credential, over the
previous record's MAC and the record's canonical JSON (seq, ts, kind, payload).
Editing, deleting or inserting a record breaks the chain at that point, and without
the key nobody can rehash the rest: `verify()` names the first bad sequence number.
Triggers make UPDATE and DELETE fail, so a tamperer has to go around SQLite's own
rules, and the chain still shows it.

Keys. The key never enters the ledger; the ledger keeps only its id (`meta.audit_key_id`,
an HMAC of a fixed label, so it reveals nothing about the key). A ledger created with
a key is keyed for life: a writer without the key, or with another key, is refused
(`AuditKeyError`), and `verify` with the key fails on a ledger that claims to be
unkeyed. A ledger created without a key (development, tests) is chained with plain
SHA-256: that detects damage, not a deliberate rewrite; the bot warns at start.

Truncating the tail cannot be seen from the chain alone: the running bot writes the
head (seq and MAC) to its log (the journal) at start, at stop and every
`ANCHOR_EVERY_S` seconds, and `verify` prints the head to compare with those lines.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
#: Seconds between two journal lines carrying the chain head (plus one at start and at stop).
ANCHOR_EVERY_S = 60.0
#: Shortest accepted key (the host generates 32 random bytes).
MIN_KEY_BYTES = 32
_KEY_ID_LABEL = b"hardkit-bot audit key id"

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
"""


class AuditKeyError(Exception):
    """The key given does not fit the ledger's chain (missing, other key, or an unkeyed ledger)."""


def key_id(key: bytes) -> str:
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


#: The payload's JSON encoder, made once: `json.dumps` with non-default options builds a new
#: encoder per call, which was a third of a record's cost. Same options, so the same bytes.
_PAYLOAD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode
#: A JSON string literal exactly as `json.JSONEncoder` (ensure_ascii, the default) writes it.
_STR = json.encoder.encode_basestring_ascii
_INSERT = "INSERT INTO audit VALUES (?,?,?,?,?,?)"


def _body(seq: int, ts: float, kind: str, payload: str) -> str:
    """The hashed text: `[seq,"repr(ts)","kind","payload"]` as JSON with separators (",", ":"),
    written directly (what a JSONEncoder writes for that list, byte for byte: an int and three
    strings) instead of through a JSONEncoder, whose per-call set-up cost more than the text."""
    return f"[{int(seq)},{_STR(repr(ts))},{_STR(kind)},{_STR(payload)}]"


def record_hash(prev: str, seq: int, ts: float, kind: str, payload: str, key: bytes | None = None) -> str:
    body = (prev + _body(seq, ts, kind, payload)).encode()
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


Row = tuple[int, float, str, str, str, str]


def encode(payload: dict[str, Any]) -> str:
    """A payload's text, as a record stores and hashes it."""
    return _PAYLOAD(payload)


def link(last: tuple[int, str], ts: float, kind: str, text: str, key: bytes | None = None) -> Row:
    """The next record after head `last` for an encoded payload, hashed (or MACed) and ready to insert:
    (seq, ts, kind, payload, prev, hash)."""
    seq, prev = last
    return seq + 1, ts, kind, text, prev, record_hash(prev, seq + 1, ts, kind, text, key)


def record(last: tuple[int, str], ts: float, kind: str, payload: dict[str, Any], key: bytes | None = None) -> Row:
    """The next record after head `last` (see `link`)."""
    return link(last, ts, kind, _PAYLOAD(payload), key)


def append(conn: sqlite3.Connection, ts: float, kind: str, payload: dict[str, Any],
           key: bytes | None = None, last: tuple[int, str] | None = None) -> tuple[int, str]:
    """Append inside the caller's transaction (the caller holds the write lock); returns the new head.
    `last`: the head as the caller knows it, only from a writer that is the chain's one writer
    (a replay's ledger); otherwise it is read from the table, where another process may have appended."""
    row = record(head(conn) if last is None else last, ts, kind, payload, key)
    conn.execute(_INSERT, row)
    return row[0], row[5]


def insert_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert records made by `record()` (in chain order) inside the caller's transaction."""
    conn.executemany(_INSERT, rows)


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(seq, MAC) of the last record; (0, GENESIS) for an empty chain."""
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (last[0], last[1]) if last else (0, GENESIS)


def stored_key_id(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'audit_key_id'").fetchone()
    return json.loads(row[0]) if row else None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    head: str
    problem: str = ""
    bad_seq: int | None = None
    keyed: bool = False
    needs_key: bool = False


def verify(conn: sqlite3.Connection, key: bytes | None = None) -> VerifyResult:
    """Recompute the chain. With a key, the ledger must be keyed with exactly that key."""
    kid = stored_key_id(conn)
    if key is not None and kid != key_id(key):
        what = f"keyed with another key (id {kid})" if kid else "not keyed (its chain is plain SHA-256)"
        return VerifyResult(False, 0, GENESIS, f"the ledger's audit chain is {what}: a rewrite would pass unnoticed",
                            1, keyed=bool(kid))
    if key is None and kid is not None:
        return VerifyResult(False, 0, GENESIS, f"the audit chain is keyed (key id {kid}): give the audit key "
                            "($CREDENTIALS_DIRECTORY/audit-key or --audit-key-file)", keyed=True, needs_key=True)
    prev, expect_seq, n = GENESIS, 1, 0
    for seq, ts, kind, payload, prev_hash, h in conn.execute(
            "SELECT seq, ts, kind, payload, prev_hash, hash FROM audit ORDER BY seq"):
        n += 1
        if seq != expect_seq:
            return VerifyResult(False, n, prev, f"sequence gap: expected {expect_seq}, found {seq} (records deleted)",
                                expect_seq, keyed=key is not None)
        if prev_hash != prev:
            return VerifyResult(False, n, prev, f"record {seq}: prev_hash does not link to record {seq - 1}", seq,
                                keyed=key is not None)
        if not hmac.compare_digest(record_hash(prev, seq, ts, kind, payload, key), h):
            return VerifyResult(False, n, prev, f"record {seq} ({kind}): content does not match its "
                                f"{'MAC' if key else 'hash'} (modified)", seq, keyed=key is not None)
        prev, expect_seq = h, seq + 1
    return VerifyResult(True, n, prev, keyed=key is not None)
