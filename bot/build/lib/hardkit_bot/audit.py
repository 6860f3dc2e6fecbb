"""Append-only, hash-chained audit log (a table in the ledger).

Each record's hash is sha256 over the previous record's hash and the record's
canonical JSON (seq, ts, kind, payload). Editing, deleting or inserting a record
breaks the chain at that point; `verify()` names the first bad sequence number.
Triggers make UPDATE and DELETE fail, so a tamperer has to go around SQLite's
own rules, and the chain still shows it. Truncating the tail cannot be seen
from the chain alone: every append is also logged (seq + hash) to the journal,
and `verify` prints the head so it can be compared with an external copy.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
"""


def record_hash(prev: str, seq: int, ts: float, kind: str, payload: str) -> str:
    body = json.dumps([seq, repr(ts), kind, payload], separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def append(conn: sqlite3.Connection, ts: float, kind: str, payload: dict[str, Any]) -> tuple[int, str]:
    """Append inside the caller's transaction (the caller holds the write lock)."""
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    h = record_hash(prev, seq, ts, kind, text)
    conn.execute("INSERT INTO audit VALUES (?,?,?,?,?,?)", (seq, ts, kind, text, prev, h))
    return seq, h


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    head: str
    problem: str = ""
    bad_seq: int | None = None


def verify(conn: sqlite3.Connection) -> VerifyResult:
    prev, expect_seq, n = GENESIS, 1, 0
    for seq, ts, kind, payload, prev_hash, h in conn.execute(
            "SELECT seq, ts, kind, payload, prev_hash, hash FROM audit ORDER BY seq"):
        n += 1
        if seq != expect_seq:
            return VerifyResult(False, n, prev, f"sequence gap: expected {expect_seq}, found {seq} (records deleted)", expect_seq)
        if prev_hash != prev:
            return VerifyResult(False, n, prev, f"record {seq}: prev_hash does not link to record {seq - 1}", seq)
        if record_hash(prev, seq, ts, kind, payload) != h:
            return VerifyResult(False, n, prev, f"record {seq} ({kind}): content does not match its hash (modified)", seq)
        prev, expect_seq = h, seq + 1
    return VerifyResult(True, n, prev)
