"""Benchmark: resident memory of a running bot (target < 80 MB).

Starts `hardkit-bot run` (paper exchange) as a subprocess, lets it trade for a
few seconds, reads VmRSS/VmHWM from /proc, then stops it. Also reports what the
optional ccxt extra costs on import (a live ccxt bot pays that on top).
Run: .venv/bin/python bench/bot_memory.py
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "bot" / "examples" / "paper.toml"


def rss(pid: int) -> tuple[float, float]:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "bot.toml"
        text = EXAMPLE.read_text().replace("bar_seconds = 1.0", "bar_seconds = 0.01")
        cfg.write_text(text.replace('timezone = "Europe/Berlin"', 'timezone = "Europe/Berlin"\nloop_interval_s = 0.05'))
        env = {**os.environ, "HARDKIT_REBOOT_INHIBIT_DIR": f"{d}/inh", "HARDKIT_BOT_LOG": "WARNING"}
        p = subprocess.Popen([sys.executable, "-m", "hardkit_bot", "run", "--config", str(cfg), "--state-dir", f"{d}/s"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(8)
            cur, peak = rss(p.pid)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        import sqlite3
        c = sqlite3.connect(f"{d}/s/ledger.sqlite")
        orders, audit = (c.execute(q).fetchone()[0] for q in ("SELECT COUNT(*) FROM orders", "SELECT COUNT(*) FROM audit"))
        c.close()
    print(f"running bot (paper exchange, 8 s, {orders} orders, {audit} audit records): RSS {cur:.1f} MB, peak {peak:.1f} MB")
    print(f"  target < 80 MB -> {'MET' if peak < 80 else 'NOT MET'} ({peak / 80:.2f}x the target)")
    probe = subprocess.run([sys.executable, "-c", "import ccxt; ccxt.binance(); import resource; "
                            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        print(f"  for reference: a Python process that imports ccxt and builds one binance client peaks at "
              f"{float(probe.stdout):.1f} MB")


if __name__ == "__main__":
    main()
