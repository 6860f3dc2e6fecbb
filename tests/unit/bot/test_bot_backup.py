"""`hardkit-bot backup --to DIR`: the ledger through SQLite's online backup API, never a raw file copy.

What a backup must hold is what the live ledger holds *now*, including commits still only in the
`-wal` (a raw copy of ledger.sqlite loses them), with a state file that agrees with the copy's latch.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from bot_helpers import BotProcess, Clock  # noqa: F401  (puts the bot's sources on sys.path)
from hardkit_bot import statefile
from hardkit_bot.model import TradingState
from hardkit_bot.store import LOSS_STREAK, Store


def _ledger_with_wal_commit(tmp_path):
    clock = Clock()
    (tmp_path / "live").mkdir()
    store = Store(tmp_path / "live" / "ledger.sqlite", clock)
    store.set_meta(LOSS_STREAK, 3, audit_kind="streak")
    store.set_state(TradingState.HALTED, "loss streak 3", clock(), TradingState.ACTIVE)
    store.set_meta("after_checkpoint", "only in the wal")   # committed, not checkpointed
    return store


def test_backup_holds_commits_a_raw_copy_of_the_live_file_loses(tmp_path):
    store = _ledger_with_wal_commit(tmp_path)
    try:
        raw = tmp_path / "raw.sqlite"
        shutil.copyfile(store.path, raw)   # what a naive file backup would take
        (tmp_path / "out").mkdir()
        latch = store.backup_to(tmp_path / "out" / "ledger.sqlite")
    finally:
        store.close()
    with sqlite3.connect(raw) as c:
        assert c.execute("SELECT value FROM meta WHERE key='after_checkpoint'").fetchone() is None
    copy = Store(tmp_path / "out" / "ledger.sqlite", Clock(), readonly=True)
    try:
        assert copy.get_meta("after_checkpoint") == "only in the wal"
        assert copy.get_meta(LOSS_STREAK) == 3
        assert copy.get_state()[0] is TradingState.HALTED
        assert copy.latch_doubt is None            # the state file agrees with the copy's latch
        assert copy.verify_audit(None).ok
    finally:
        copy.close()
    assert latch.state == "HALTED"
    assert statefile.read(tmp_path / "out" / "ledger.sqlite.state") == latch
    assert not (tmp_path / "out" / "ledger.sqlite-wal").exists()   # one self-contained file


def test_backup_refuses_a_ledger_whose_latch_is_in_doubt(tmp_path):
    store = _ledger_with_wal_commit(tmp_path)
    store.close()
    statefile.path_for(tmp_path / "live" / "ledger.sqlite").unlink()
    store = Store(tmp_path / "live" / "ledger.sqlite", Clock(), readonly=True)
    (tmp_path / "out").mkdir()
    try:
        assert store.latch_doubt
        try:
            store.backup_to(tmp_path / "out" / "ledger.sqlite")
        except ValueError as e:
            assert "in doubt" in str(e)
        else:
            raise AssertionError("a doubtful latch was backed up")
    finally:
        store.close()
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_backup_of_a_running_bot(bot, tmp_path):
    from bot_helpers import config_text
    bot.write_config(config_text())
    bot.start()
    bot.wait_for(lambda: (bot.state / "ledger.sqlite").exists(), what="the ledger")
    out = tmp_path / "snap"
    out.mkdir()
    res = bot.cli("backup", "--to", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "ACTIVE" and doc["ledger"] == str(out / "ledger.sqlite")
    # The paper exchange lives on the host too: its book is copied (online backup API) as "the exchange".
    assert sorted(p.name for p in out.iterdir()) == ["ledger.sqlite", "ledger.sqlite.state", "paper-exchange.sqlite"]


def test_cli_backup_bad_target_is_a_usage_error(bot, tmp_path):
    bot.state.mkdir(parents=True)
    Store(bot.state / "ledger.sqlite", Clock()).close()
    res = bot.cli("backup", "--to", str(tmp_path / "missing"))
    assert res.returncode == 2 and "not an existing folder" in res.stderr and "Traceback" not in res.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    res = bot.cli("backup", "--to", str(full))
    assert res.returncode == 2 and "not empty" in res.stderr


def _keyed_backup(tmp_path, key: bytes):
    """A keyed ledger with a latched HALTED state, backed up by the CLI into tmp_path/snap."""
    live = tmp_path / "live"
    live.mkdir()
    store = Store(live / "ledger.sqlite", Clock(), key)
    store.set_meta(LOSS_STREAK, 3, audit_kind="streak")
    store.set_state(TradingState.HALTED, "loss streak 3", 1_800_000_000.0, TradingState.ACTIVE)
    store.close()
    (tmp_path / "key").write_bytes(key)
    (tmp_path / "snap").mkdir()
    b = BotProcess(tmp_path)
    res = b.cli("backup", "--to", str(tmp_path / "snap"), "--state-dir", str(live), state=False)
    assert res.returncode == 0, res.stderr
    return tmp_path / "snap"


def test_restore_replaces_the_ledger_after_checking_it(bot, tmp_path):
    key = b"r" * 32
    snap = _keyed_backup(tmp_path, key)
    bot.state.mkdir(parents=True)
    Store(bot.state / "ledger.sqlite", Clock(), key).close()   # what a fresh deploy's bot left behind
    res = bot.cli("restore", "--from", str(snap), "--audit-key-file", str(tmp_path / "key"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "HALTED" and doc["audit_records"] >= 2 and doc["replaced"]
    assert doc["loss_streak"] == 3 and doc["positions"] == {}   # the ledger's own view, as restored
    assert (Path(doc["replaced"]) / "ledger.sqlite").exists()   # the replaced ledger is kept aside
    res = bot.cli("audit", "verify", "--audit-key-file", str(tmp_path / "key"))
    assert res.returncode == 0 and "audit log OK" in res.stdout, res.stderr
    store = Store(bot.state / "ledger.sqlite", Clock(), key)
    try:
        assert store.latch_doubt is None and store.get_state()[0] is TradingState.HALTED
        assert store.get_meta(LOSS_STREAK) == 3
    finally:
        store.close()


def test_restore_refuses_a_foreign_key_and_a_running_bot(bot, tmp_path):
    snap = _keyed_backup(tmp_path, b"r" * 32)
    (tmp_path / "other").write_bytes(b"o" * 32)
    res = bot.cli("restore", "--from", str(snap), "--audit-key-file", str(tmp_path / "other"))
    assert res.returncode == 2 and "keyed with another key" in res.stderr and "not restored" in res.stderr
    assert not (bot.state / "ledger.sqlite").exists()
    from bot_helpers import config_text
    bot.write_config(config_text())
    bot.start()
    bot.wait_for(lambda: (bot.state / "ledger.sqlite").exists(), what="the ledger")
    res = bot.cli("restore", "--from", str(snap), "--audit-key-file", str(tmp_path / "key"))
    assert res.returncode == 3 and "IS running" in res.stderr, res.stderr
