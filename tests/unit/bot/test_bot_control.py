"""Kill switch over the control socket while the strategy loop is wedged; latch across restarts."""
import json
import os
import sqlite3
import stat
import time
from decimal import Decimal as D

from hardkit_bot import control

from bot_helpers import config_text


def status(bot):
    return control.request(bot.state / "control.sock", "status", timeout=10)


def test_halt_and_flatten_work_while_the_loop_is_wedged_and_survive_restart(bot):
    bot.write_config(config_text(loop=0.05, bar=0.02))
    p = bot.start(env={"HARDKIT_BOT_WEDGE_AT": "strategy"})
    sock = bot.state / "control.sock"
    bot.wait_for(sock.exists, what="control socket")
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    st = bot.wait_for(lambda: (s := status(bot))["positions"] and s, what="an open position")
    # the reboot inhibitor is held while exposed
    inh = json.loads((bot.inhibit / "hardkit-bot").read_text())
    assert inh["holder"] == "hardkit-bot" and inh["pid"] == p.pid and "BTC/USDT" in inh["reason"] and inh["since"]
    def settled():   # the iteration that opened the position may still be finishing (e.g. placing its stop)
        before = status(bot)["steps"]
        time.sleep(0.2)
        return (before,) if status(bot)["steps"] == before else None
    [steps] = bot.wait_for(settled, what="the loop to wedge")
    time.sleep(0.6)
    assert status(bot)["steps"] == steps, "the loop should be wedged for this test"

    r = bot.cli("halt", "--reason", "test: wedged loop")
    assert r.returncode == 0, r.stderr
    s = status(bot)
    assert s["state"] == "HALTED" and "test: wedged loop" in s["reason"]

    r = bot.cli("flatten", "--timeout", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["flat"] is True and out["holdings"] == {} and out["open_orders"] == []
    c = sqlite3.connect(f"file:{bot.state / 'paper-exchange.sqlite'}?mode=ro", uri=True)
    btc = c.execute("SELECT free, locked FROM balances WHERE asset='BTC'").fetchone()
    assert D(btc[0]) + D(btc[1]) < D("0.0001")            # below min qty: dust at most
    assert c.execute("SELECT COUNT(*) FROM orders WHERE status IN ('OPEN','PARTIALLY_FILLED')").fetchone()[0] == 0
    c.close()
    assert not (bot.inhibit / "hardkit-bot").exists()       # flat: inhibitor released
    assert status(bot)["steps"] == steps                    # all of that without the loop

    p.kill()
    p.wait(10)
    p2 = bot.start(max_steps=5)
    assert p2.wait(30) == 0
    r = bot.cli("status", "--json")
    st = json.loads(r.stdout)
    assert st["state"] == "HALTED" and "test: wedged loop" in st["reason"]   # a restart never clears a halt
    r = bot.cli("reset", "--note", "checked")
    assert r.returncode == 0 and json.loads(r.stdout)["from"] == "HALTED"
    assert json.loads(bot.cli("status", "--json").stdout)["state"] == "ACTIVE"


def test_status_json_is_a_risk_view(bot):
    bot.write_config(config_text(loop=0.05, bar=0.02))
    bot.start()
    bot.wait_for((bot.state / "control.sock").exists, what="control socket")
    bot.wait_for(lambda: status(bot)["steps"] > 3, what="a few iterations")
    r = bot.cli("status", "--json")
    assert r.returncode == 0
    st = json.loads(r.stdout)
    assert {"state", "reason", "since", "limits", "positions", "exposure", "equity", "open_orders"} <= set(st)
    names = {u["name"] for u in st["limits"]}
    assert {"daily_loss_pct", "drawdown_pct", "consecutive_losses", "total_exposure", "open_positions",
            "orders_per_minute", "rejects_per_minute", "cancels_per_minute", "data_age_s"} <= names
    for u in st["limits"]:
        assert {"used", "limit", "pct"} <= set(u)
    metrics = control.request(bot.state / "control.sock", "metrics")["text"]
    assert 'hardkit_bot_state{state="ACTIVE"} 1' in metrics and "hardkit_bot_limit_used" in metrics


def test_unknown_command_and_wrong_permissions_are_refused(bot, tmp_path):
    bot.write_config(config_text().replace("[risk]", '[control]\nsocket_mode = "0600"\n[risk]'))
    bot.start()
    sock = bot.state / "control.sock"
    bot.wait_for(sock.exists, what="control socket")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert control.request(sock, "rm -rf")["ok"] is False
