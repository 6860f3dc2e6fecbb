"""One latched state: the kill switch never lies, a reset resets, a damaged -wal never un-latches.

Real processes where the claim is about processes (a running bot, a second writer, SIGKILL and a
damaged -wal); the engine through its replay path where the claim is about the order of work.
"""
import json
import os
import signal
import sqlite3
import threading
import time

import pytest

from hardkit_bot import control, statefile
from hardkit_bot.model import TradingState
from hardkit_bot.risk.state import StateMachine
from hardkit_bot.store import Store

from bot_helpers import Replay, config_text


def sock_status(path):
    return control.request(path, "status", timeout=10)


def ledger_state(bot):
    s = Store(bot.state / "ledger.sqlite", readonly=True)
    try:
        return s.get_state()
    finally:
        s.close()


# ---- 1. the kill switch never lies ------------------------------------------------------------

def test_offline_halt_is_refused_while_a_bot_runs_elsewhere_and_the_bot_keeps_the_truth(bot, tmp_path):
    """The issue's scenario: bot serving its socket from --runtime-dir, operator points at the state dir."""
    bot.write_config(config_text(loop=0.05, bar=0.02))
    rt = tmp_path / "rt"
    bot.start("--runtime-dir", str(rt))
    sock = rt / "control.sock"
    bot.wait_for(sock.exists, what="control socket in the runtime dir")
    bot.wait_for(lambda: sock_status(sock)["steps"] > 2, what="a few iterations")

    r = bot.cli("halt", "--reason", "operator at the wrong socket")
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout == "" and "IS running" in r.stderr and "NOT changed" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # nothing anywhere claims a halt the bot does not obey
    assert ledger_state(bot)[0] is TradingState.ACTIVE
    assert sock_status(sock)["state"] == "ACTIVE"
    r = bot.cli("reset", "--note", "x")
    assert r.returncode == 3 and "NOT changed" in r.stderr
    st = json.loads(bot.cli("status", "--json").stdout)     # no socket at the state dir: the ledger, honestly labelled
    assert st["state"] == "ACTIVE" and st["running"] is True and "IS running" in st["note"]

    r = bot.cli("halt", "--reason", "right socket", "--runtime-dir", str(rt))
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "HALTED"
    assert sock_status(sock)["state"] == "HALTED" and ledger_state(bot)[0] is TradingState.HALTED


def test_offline_halt_and_reset_work_when_the_lock_proves_no_bot_runs(bot):
    bot.write_config(config_text(loop=0.05, bar=0.02))
    assert bot.start(max_steps=3).wait(30) == 0
    r = bot.cli("halt", "--reason", "maintenance")
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True, "state": "HALTED", "offline": True}
    st = json.loads(bot.cli("status", "--json").stdout)
    assert st["running"] is False and st["state"] == "HALTED"
    assert bot.start(max_steps=3).wait(30) == 0
    assert ledger_state(bot)[0] is TradingState.HALTED and "maintenance" in ledger_state(bot)[1]
    r = bot.cli("reset", "--note", "done")
    assert r.returncode == 0 and json.loads(r.stdout)["from"] == "HALTED"
    assert ledger_state(bot)[0] is TradingState.ACTIVE


def test_a_latch_written_by_another_process_is_obeyed_by_the_running_bot(bot):
    bot.write_config(config_text(loop=0.05, bar=0.02))
    bot.start()
    sock = bot.state / "control.sock"
    bot.wait_for(sock.exists, what="control socket")
    bot.wait_for(lambda: sock_status(sock)["steps"] > 2, what="a few iterations")
    other = Store(bot.state / "ledger.sqlite")          # a second writer: another process's view of the ledger
    StateMachine(other, time.time).escalate(TradingState.HALTED, "written by another process")
    other.close()
    st = bot.wait_for(lambda: (s := sock_status(sock))["state"] == "HALTED" and s, timeout=30, what="the bot to obey")
    obeyed = time.time()
    assert st["reason"] == "written by another process"
    time.sleep(0.5)
    late = [r for r in Store(bot.state / "ledger.sqlite", readonly=True).orders()
            if r["side"] == "buy" and r["created_at"] > obeyed]
    assert late == [], "an entry left after the bot reported the latch"


def control_records(bot, cmd):
    """The control requests the bot has read, from its audit chain (a read-only look at the ledger)."""
    c = sqlite3.connect(f"file:{bot.state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        rows = [json.loads(p) for (p,) in c.execute("SELECT payload FROM audit WHERE kind = 'control'")]
    finally:
        c.close()
    return [r for r in rows if r["cmd"] == cmd]


def test_a_reset_its_client_gave_up_on_is_never_executed_later(bot):
    """A stopped bot (SIGSTOP) queues a reset its operator was told got no answer; woken, it must not go ACTIVE."""
    bot.write_config(config_text(loop=0.05, bar=0.02))
    p = bot.start()
    sock = bot.state / "control.sock"
    bot.wait_for(sock.exists, what="control socket")
    assert control.request(sock, "halt", reason="before the pause", timeout=10)["state"] == "HALTED"
    os.kill(p.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            control.request(sock, "reset", note="the client gives up", timeout=1)
    finally:
        os.kill(p.pid, signal.SIGCONT)
    [late] = bot.wait_for(lambda: control_records(bot, "reset"), what="the bot to read the late reset")
    assert late.get("refused"), late
    st = sock_status(sock)
    assert st["state"] == "HALTED" and "before the pause" in st["reason"], st
    # the command line's --wait is the deadline it sends (as `hardkit bot reset` runs it on a host)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        r = bot.cli("reset", "--note", "the cli gives up", "--wait", "1")
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert r.returncode == 3 and "NOT changed" in r.stderr, r.stdout + r.stderr
    bot.wait_for(lambda: len(control_records(bot, "reset")) == 2, what="the bot to read the second late reset")
    assert control_records(bot, "reset")[1].get("refused") and sock_status(sock)["state"] == "HALTED"
    # an answered reset still works
    assert control.request(sock, "reset", note="answered", timeout=10)["state"] == "ACTIVE"


def test_a_halt_read_while_the_bot_stops_is_latched_in_both_copies(bot):
    """What `hardkit bot halt` meets on a wedged bot: the halt is queued, then the unit is stopped
    (SIGTERM and SIGCONT, as systemd does). Whatever the bot did with the halt, the next start must
    find the ledger and its state file agreeing, never a latch in doubt."""
    bot.write_config(config_text(loop=0.05, bar=0.02))
    p = bot.start()
    sock = bot.state / "control.sock"
    bot.wait_for(lambda: sock.exists() and sock_status(sock)["steps"] > 2, what="a few iterations")
    os.kill(p.pid, signal.SIGSTOP)
    with pytest.raises(TimeoutError):
        control.request(sock, "halt", reason="wedged bot", timeout=1)
    os.kill(p.pid, signal.SIGTERM)
    os.kill(p.pid, signal.SIGCONT)
    assert p.wait(30) == 0, bot.logs()[-3000:]
    ledger = Store(bot.state / "ledger.sqlite", readonly=True)
    try:
        state, reason, _ = ledger.get_state()
        assert ledger.latch_doubt is None, ledger.latch_doubt
    finally:
        ledger.close()
    assert state is TradingState.ACTIVE or (state is TradingState.HALTED and "wedged bot" in reason), (state, reason)


def test_closing_the_ledger_waits_for_a_latch_being_written(tmp_path, clock, monkeypatch):
    """A bot shutting down closes its ledger while a control thread latches HALTED: the close waits for
    the second copy (state file), or the next start would boot in doubt with the operator's reason lost."""
    store = Store(tmp_path / "ledger.sqlite", clock)
    entered, release = threading.Event(), threading.Event()
    real_write = statefile.write

    def slow_write(path, latch):
        entered.set()
        release.wait(10)
        real_write(path, latch)

    monkeypatch.setattr(statefile, "write", slow_write)
    halting = threading.Thread(target=StateMachine(store, clock).escalate, args=(TradingState.HALTED, "at shutdown"))
    halting.start()
    assert entered.wait(10)
    closing = threading.Thread(target=store.close)
    closing.start()
    closing.join(0.3)
    still_closing = closing.is_alive()
    release.set()
    halting.join(10)
    closing.join(10)
    assert still_closing, "the ledger closed while the latch's state file was still being written"
    again = Store(tmp_path / "ledger.sqlite", clock)
    try:
        assert again.latch_doubt is None and again.get_state()[:2] == (TradingState.HALTED, "at shutdown")
    finally:
        again.close()


def test_an_offline_halt_over_a_latch_in_doubt_keeps_the_operators_reason(tmp_path, clock):
    from hardkit_bot import offline

    store = Store(tmp_path / "ledger.sqlite", clock)
    StateMachine(store, clock).escalate(TradingState.HALTED, "a halt whose state file was lost")
    store.close()
    statefile.path_for(tmp_path / "ledger.sqlite").unlink()
    store = Store(tmp_path / "ledger.sqlite", clock)
    assert store.latch_doubt
    try:
        assert offline.halt(store, "operator: maintenance")["state"] == "HALTED"
    finally:
        store.close()
    again = Store(tmp_path / "ledger.sqlite", clock, readonly=True)
    try:
        state, reason, _ = again.get_state()
        assert again.latch_doubt is None and state is TradingState.HALTED
        assert "operator: maintenance" in reason and "in doubt" in reason, reason
    finally:
        again.close()


def test_the_next_iteration_adopts_a_latch_written_by_another_writer(tmp_path, clock):
    rp = Replay(tmp_path, clock)
    rp.bar()
    other = Store(tmp_path / "ledger.sqlite", clock)
    StateMachine(other, clock).escalate(TradingState.HALTED, "another writer")
    other.close()
    assert rp.eng.sm.latched is TradingState.ACTIVE      # not yet: the engine reads it at the top of an iteration
    rp.eng.step()
    v = rp.eng.sm.view()
    assert v.latched is TradingState.HALTED and v.reason == "another writer"


# ---- 2. a reset resets ------------------------------------------------------------------------

def losing_trip(rp, price):
    assert rp.buy(qty="40", stop="90", tp="130").denial is None
    rp.bar(price)


def stays_active(rp, bars=5):
    for _ in range(bars):
        rp.bar()
        assert rp.eng.sm.effective is TradingState.ACTIVE, rp.eng.sm.view().reason


# the volatility breaker off (range z-score and the one-bar gap trigger): these tests move the price in one bar
RELAXED = ('vol_z_enter = 50\nvol_gap_pct = 50\nrisk_per_trade_pct = "5"\nmax_order_notional = "5000"\n'
           'max_total_exposure = "8000"\n')


def test_reset_after_a_loss_streak_starts_a_new_epoch(tmp_path, clock):
    rp = Replay(tmp_path, clock, extra_risk=RELAXED, streak=2)
    for _ in range(5):
        rp.bar()
    for _ in range(2):                                   # two losing round trips
        losing_trip(rp, rp.price - 0.5)
        rp.eng.close_position("BTC/USDT", "test exit")
        rp.bar()
    assert rp.eng.sm.latched is TradingState.HALTED and "consecutive losing" in rp.eng.sm.view().reason
    out = rp.eng.reset("reviewed the strategy")
    assert out == {"ok": True, "from": "HALTED", "state": "ACTIVE"}
    assert rp.store.get_meta("consecutive_losses") == 0
    stays_active(rp)


def test_reset_after_a_drawdown_halt_takes_the_peak_from_now(tmp_path, clock):
    rp = Replay(tmp_path, clock, extra_risk=RELAXED + 'max_drawdown_pct = "1"\nmax_daily_loss_pct = "50"\n'
                                                      'daily_loss_reduce_pct = "40"\n')
    for _ in range(5):
        rp.bar()
    losing_trip(rp, 97.0)                                # -120 on 10000: 1.2 % from the peak
    assert rp.eng.sm.latched is TradingState.HALTED and "drawdown" in rp.eng.sm.view().reason
    assert rp.eng.reset("accepting the drawdown")["state"] == "ACTIVE"
    assert rp.store.get_meta("equity_peak") == pytest.approx(rp.eng.equity_f)
    stays_active(rp)
    rp.bar(94.0)                                         # a new 1.2 % fall in the new epoch trips again
    assert rp.eng.sm.latched is TradingState.HALTED


def test_reset_after_a_daily_loss_keeps_the_day_unless_told_new_day(tmp_path, clock):
    rp = Replay(tmp_path, clock, extra_risk=RELAXED + 'daily_loss_reduce_pct = "1"\nmax_daily_loss_pct = "2"\n')
    for _ in range(5):
        rp.bar()
    losing_trip(rp, 94.9)
    assert rp.eng.sm.latched is TradingState.HALTED and "daily loss" in rp.eng.sm.view().reason
    # the day's budget stays spent: the reset's own breaker pass re-latches at once (answered truthfully)
    out = rp.eng.reset("same day")
    assert out["state"] == "HALTED" and "max daily loss" in out["reason"]
    out = rp.eng.reset("new day", new_day=True)
    assert out["state"] == "ACTIVE"
    assert rp.store.get_meta("daily_anchor")["equity"] == pytest.approx(rp.eng.equity_f)
    stays_active(rp)
    kinds = [json.loads(r[1]) for r in rp.store.conn.execute("SELECT kind, payload FROM audit WHERE kind = 'reset'")]
    assert [k["note"] for k in kinds] == ["same day", "new day"] and kinds[-1]["meta"]["risk_epoch"]["new_day"]


def test_reset_after_an_equity_floor_kill_stays_active(tmp_path, clock):
    rp = Replay(tmp_path, clock, extra_risk=RELAXED + 'equity_floor = "9950"\nmax_daily_loss_pct = "50"\n'
                                                      'daily_loss_reduce_pct = "40"\n')
    for _ in range(5):
        rp.bar()
    losing_trip(rp, 97.0)                                # equity 9880 < 9950: KILLED and flattened
    assert rp.eng.sm.latched is TradingState.KILLED and rp.qty == 0
    assert rp.eng.reset("operator reviewed")["state"] == "ACTIVE"
    stays_active(rp)
    # the epoch's floor: the loss so far is accepted, a further drawdown-sized one is not
    assert rp.eng.floor.floor == pytest.approx(rp.eng.equity_f * 0.9)


def test_breakers_run_before_the_strategy_so_no_entry_leaves_before_a_re_trip(tmp_path, clock):
    """A latch lowered from outside the engine (here: straight in the state machine, as another
    process could) while the daily loss still holds: the next bar carries an entry signal, and the
    breaker must re-latch before the strategy acts."""
    rp = Replay(tmp_path, clock, extra_risk=RELAXED + 'daily_loss_reduce_pct = "1"\nmax_daily_loss_pct = "2"\n')
    rp.eng.strats["BTC/USDT"].band = 0.5                 # the fixture's strategy never signals; this one does
    for _ in range(12):
        rp.bar()
    losing_trip(rp, 94.9)
    rp.eng.close_position("BTC/USDT", "test exit")
    for _ in range(12):                                  # flat and calm: the strategy is out and re-arms
        rp.bar()
    assert rp.qty == 0 and rp.eng.sm.latched is TradingState.HALTED
    rp.eng.sm.reset("lowered without a new epoch")
    decided = len(rp.store.decisions())
    rp.bar(98.0)                                         # a sharp up bar: the trend entry signal
    assert rp.eng.strats["BTC/USDT"].above, "the bar should have produced an entry signal"
    entries = [d for d in rp.store.decisions()[decided:] if d["intent_key"].endswith(":enter")]
    assert entries == [] and rp.eng.sm.latched is TradingState.HALTED


def test_a_flat_book_whose_equity_breakers_are_skipped_still_anchors_each_new_day(tmp_path, clock):
    """While flat the equity does not move and the engine skips the equity breakers (engine.breakers):
    crossing midnight must still anchor the new day on the equity before midnight."""
    rp = Replay(tmp_path, clock)
    rp.bar()
    first = rp.store.get_meta("daily_anchor")
    for _ in range(int(86400 / rp.STEP) + 1):           # a day of flat bars crosses one midnight (UTC)
        rp.bar()
    now = rp.store.get_meta("daily_anchor")
    assert now["day"] > first["day"] and now["equity"] == pytest.approx(rp.eng.equity_f)
    assert rp.eng.daily.day == now["day"]


# ---- 3. a damaged or lost -wal never un-latches ---------------------------------------------------

@pytest.mark.parametrize("damage", ["garbled", "deleted"])
def test_a_halt_survives_a_damaged_or_deleted_wal(bot, damage):
    bot.write_config(config_text(loop=0.05, bar=0.02))
    p = bot.start()
    sock = bot.state / "control.sock"
    bot.wait_for(sock.exists, what="control socket")
    bot.wait_for(lambda: sock_status(sock)["steps"] > 3, what="a few iterations")
    assert control.request(sock, "halt", reason="latched before the crash")["state"] == "HALTED"
    p.send_signal(signal.SIGKILL)                        # at once: the -wal has had no chance to checkpoint
    p.wait(10)
    wal = bot.state / "ledger.sqlite-wal"
    assert wal.exists() and wal.stat().st_size > 0
    if damage == "deleted":
        wal.unlink()
    else:
        with open(wal, "r+b") as f:
            f.write(os.urandom(32))                      # the -wal header: SQLite ignores the whole log
    p2 = bot.start(max_steps=5)
    assert p2.wait(30) == 0, bot.logs()[-2000:]
    st = json.loads(bot.cli("status", "--json").stdout)
    assert st["state"] == "HALTED", st
    assert "started in ACTIVE" not in (bot.tmp / "bot-1.log").read_text()


def boot(path, clock):
    """What a start sees: the state machine over a freshly opened ledger (closed again)."""
    s = Store(path, clock)
    try:
        return StateMachine(s, clock).view()
    finally:
        s.close()


def test_state_file_doubt_boots_halted(tmp_path, clock):
    path = tmp_path / "ledger.sqlite"
    Store(path, clock).close()
    sf = statefile.path_for(path)
    assert statefile.read(sf).state == "ACTIVE"
    sf.write_text(sf.read_text().replace("fresh ledger", "edited"))      # damage: checksum mismatch
    v = boot(path, clock)
    assert v.latched is TradingState.HALTED and "checksum" in v.reason
    assert boot(path, clock).latched is TradingState.HALTED               # and stays, now agreed
    sf.unlink()
    v = boot(path, clock)
    assert v.latched is TradingState.HALTED and "missing" in v.reason


def test_a_killed_state_file_over_a_new_ledger_boots_killed(tmp_path, clock):
    path = tmp_path / "ledger.sqlite"
    s = Store(path, clock)
    StateMachine(s, clock).escalate(TradingState.KILLED, "equity floor")
    s.close()
    for f in tmp_path.glob("ledger.sqlite*"):
        if f.name != statefile.path_for(path).name:
            f.unlink()                                   # the ledger is lost; its state file is not
    v = boot(path, clock)
    assert v.latched is TradingState.KILLED and "ledger is new" in v.reason


def test_every_state_change_is_checkpointed_into_the_main_database(tmp_path, clock):
    path = tmp_path / "ledger.sqlite"
    s = Store(path, clock)
    StateMachine(s, clock).escalate(TradingState.HALTED, "durable")
    # read the main file alone, ignoring the -wal (immutable=1 never looks at it)
    c = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    assert c.execute("SELECT state, reason FROM trading_state").fetchone() == ("HALTED", "durable")
    c.close()
    s.close()
