"""hardkit-bot command line: run | status | halt | flatten | reset | audit verify | dashboard-proxy | backtest |
check-config | config-doc.

Runtime contract (systemd): state in $STATE_DIRECTORY (else --state-dir), the
control socket at $RUNTIME_DIRECTORY/control.sock (else --runtime-dir, else the
state dir) with the dashboard's dashboard.sock beside it, exchange credentials
only from $CREDENTIALS_DIRECTORY, logs to stderr for journald. Exit codes: 0 ok,
1 operation failed (e.g. not flat), 2 invalid configuration or usage, 3 bot not reachable.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from . import audit, control
from .config import ConfigError, load

log = logging.getLogger("hardkit_bot")


def _state_dir(args) -> Path | None:
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path(args.state_dir) if getattr(args, "state_dir", None) else None


def _socket(args) -> Path | None:
    if getattr(args, "socket", None):
        return Path(args.socket)
    rt = os.environ.get("RUNTIME_DIRECTORY")
    if rt:
        return Path(rt.split(":")[0]) / "control.sock"
    if getattr(args, "runtime_dir", None):
        return Path(args.runtime_dir) / "control.sock"
    sd = _state_dir(args)
    return sd / "control.sock" if sd else None


def _load_config(path: str):
    try:
        return load(path)
    except ConfigError as e:
        print(f"hardkit-bot: configuration {path} has {len(e.problems)} problem(s); nothing was traded:", file=sys.stderr)
        for p in e.problems:
            print(f"  - {p}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args) -> int:
    cfg = _load_config(args.config)
    sd = _state_dir(args)
    if sd is None:
        print("hardkit-bot: no state directory ($STATE_DIRECTORY or --state-dir)", file=sys.stderr)
        return 2
    sd.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = open(sd / "bot.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"hardkit-bot: another bot already runs on {sd}", file=sys.stderr)
        return 2
    import time

    from .control import ControlServer
    from .engine import Engine
    from .exchange import build
    from .exchange.base import ExchangeError
    from .inhibitor import RebootInhibitor
    from .store import Store
    clock = time.time
    store = Store(sd / "ledger.sqlite", clock=clock)
    try:
        exchange = build(cfg, sd, clock)
    except Exception as e:  # credentials, unknown exchange, missing extra
        log.error("cannot set up the exchange: %s", e)
        return 2
    engine = Engine(cfg, store, exchange, clock, inhibitor=RebootInhibitor(args.inhibit_dir),
                    metrics_file=args.metrics_file or cfg.metrics["textfile"] or None)
    try:
        engine.start()
    except ExchangeError as e:
        log.error("start-up reconciliation failed: %s", e)
    sock = _socket(args) or sd / "control.sock"
    mode = int(cfg.control["socket_mode"], 8)
    server = ControlServer(sock, engine, mode)
    server.start()
    servers = [server]
    if cfg.dashboard["enabled"]:
        from .dashboard import DashboardServer
        from .dashboard_proxy import SOCKET_NAME
        servers.append(DashboardServer(sock.parent / SOCKET_NAME, engine.status, mode,
                                       sample_s=cfg.dashboard["sample_s"], points=cfg.dashboard["points"]))
        servers[-1].start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.max_steps:
            for _ in range(args.max_steps):
                if stop.is_set():
                    break
                engine.step_safely()
                stop.wait(cfg.bot["loop_interval_s"])
        else:
            engine.run(stop)
    finally:
        for srv in servers:
            srv.stop()
        engine.update_inhibitor()
        view = engine.sm.view()
        log.info("stopped in %s (%s)", view.state.value, view.reason)
        store.close()
    return 0


def _offline_status(args) -> dict | None:
    sd = _state_dir(args)
    if sd is None or not (sd / "ledger.sqlite").exists():
        return None
    c = sqlite3.connect(f"file:{sd / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        st, reason, since = c.execute("SELECT state, reason, since FROM trading_state").fetchone()
        pos = [{"instrument": r[0], "qty": r[1], "avg_price": r[2]}
               for r in c.execute("SELECT instrument, qty, avg_price FROM positions WHERE CAST(qty AS REAL) > 0")]
        live = c.execute("SELECT COUNT(*) FROM orders WHERE status IN "
                         "('PENDING_SUBMIT','UNKNOWN','OPEN','PARTIALLY_FILLED')").fetchone()[0]
    finally:
        c.close()
    return {"running": False, "state": st, "reason": reason,
            "since": datetime.fromtimestamp(since, timezone.utc).isoformat(), "positions": pos,
            "live_orders": live, "note": "bot not running: read from the ledger"}


def _ask(args, cmd: str, **kw) -> dict | None:
    sock = _socket(args)
    if sock is None or not sock.exists():
        return None
    try:
        return control.request(sock, cmd, **kw)
    except OSError:
        return None


def cmd_status(args) -> int:
    st = _ask(args, "status") or _offline_status(args)
    if st is None:
        print("hardkit-bot: bot not reachable and no ledger found", file=sys.stderr)
        return 3
    st.pop("ok", None)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"state: {st['state']}  ({st['reason']}, since {st['since']})")
    if not st.get("running", True):
        print(st["note"])
    for p in st.get("positions", []):
        print(f"position {p['instrument']}: {p['qty']} @ {p['avg_price']}"
              + (f"  last {p['last']}  stop {p['stop']}" if "last" in p else ""))
    for u in st.get("limits", []):
        print(f"  {u['name']:<28} {u['used']:>14.4f} / {u['limit']:<14.4f} {u['pct']:6.1f}%")
    return 0


def cmd_control(args) -> int:
    kw = {"halt": {"reason": getattr(args, "reason", "")}, "flatten": {"timeout": getattr(args, "timeout", 30.0)},
          "reset": {"note": getattr(args, "note", "")}}[args.cmd]
    resp = _ask(args, args.cmd, **kw)
    if resp is None and args.cmd in ("reset", "halt"):
        sd = _state_dir(args)
        if sd is not None and (sd / "ledger.sqlite").exists():
            resp = _offline_state_change(sd, args.cmd, kw)
    if resp is None:
        print("hardkit-bot: bot not reachable (is it running? check the socket path)", file=sys.stderr)
        return 3
    print(json.dumps(resp, indent=2, default=str))
    return 0 if resp.get("ok") else 1


def _offline_state_change(sd: Path, cmd: str, kw: dict) -> dict:
    """halt/reset while the bot is stopped: change the latched state in the ledger directly."""
    import time

    from .model import TradingState
    from .risk.state import StateMachine
    from .store import Store
    store = Store(sd / "ledger.sqlite")
    try:
        sm = StateMachine(store, time.time)
        if cmd == "reset":
            prev = sm.reset(kw["note"] or "operator (offline)")
            return {"ok": True, "from": prev.value, "state": "ACTIVE", "offline": True}
        sm.escalate(TradingState.HALTED, f"operator halt (offline): {kw['reason']}")
        return {"ok": True, "state": sm.latched.value, "offline": True}
    finally:
        store.close()


def cmd_audit(args) -> int:
    sd = _state_dir(args)
    if sd is None or not (sd / "ledger.sqlite").exists():
        print("hardkit-bot: no ledger found ($STATE_DIRECTORY or --state-dir)", file=sys.stderr)
        return 3
    c = sqlite3.connect(f"file:{sd / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        res = audit.verify(c)
    finally:
        c.close()
    if res.ok:
        print(f"audit log OK: {res.records} records, head {res.head}")
        return 0
    print(f"audit log TAMPERED at record {res.bad_seq}: {res.problem}", file=sys.stderr)
    return 1


def cmd_dashboard_proxy(args) -> int:
    from .dashboard_proxy import main as proxy
    rt = os.environ.get("RUNTIME_DIRECTORY")
    return proxy(args.runtime_dir or (rt.split(":")[0] if rt else None))


def cmd_backtest(args) -> int:
    cfg = _load_config(args.config)
    from . import backtest
    from .exchange.base import BadExchangeData
    from .exchange.market import generate, load_csv
    try:
        bars = load_csv(args.csv) if args.csv else generate(args.bars, seed=cfg.exchange["seed"],
                                                             start_price=cfg.exchange["start_price"])
    except (BadExchangeData, OSError) as e:
        print(f"hardkit-bot: cannot read price series: {e}", file=sys.stderr)
        return 2
    res = backtest.run(cfg, bars, args.bar_seconds)
    d = res.as_dict()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            print(f"{k:>18}: {v}")
    return 0


def cmd_check_config(args) -> int:
    cfg = _load_config(args.config)
    print(f"{args.config}: OK ({len(cfg.instruments)} instruments, exchange {cfg.exchange['kind']})")
    return 0


def cmd_config_doc(args) -> int:
    """Every config key with its default and meaning (Markdown), straight from config.FIELDS."""
    from .config import FIELDS, INSTRUMENT_FIELDS
    from .config import _REQUIRED  # noqa: PLC2701 - the sentinel is part of the schema
    print("| key | default | meaning |\n|---|---|---|")
    for section, fields in [*FIELDS.items(), ("[[instruments]]", INSTRUMENT_FIELDS)]:
        for name, f in fields.items():
            default = "required" if f.default is _REQUIRED else repr(f.default if not hasattr(f.default, "as_tuple") else str(f.default))
            print(f"| `{section.strip('[]')}.{name}` | {default} | {f.doc} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("HARDKIT_BOT_LOG", "INFO"), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="hardkit-bot", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--state-dir", help="ledger directory (default $STATE_DIRECTORY)")
        sp.add_argument("--runtime-dir", help="control socket directory (default $RUNTIME_DIRECTORY)")
        sp.add_argument("--socket", help="control socket path (overrides the directories)")
        return sp

    r = common(sub.add_parser("run", help="run the bot"))
    r.add_argument("--config", required=True)
    r.add_argument("--metrics-file", help="Prometheus textfile to write each iteration")
    r.add_argument("--inhibit-dir", help="reboot inhibitor dir (default $HARDKIT_REBOOT_INHIBIT_DIR or /run/hardkit/reboot-inhibitors)")
    r.add_argument("--max-steps", type=int, default=0, help=argparse.SUPPRESS)
    r.set_defaults(fn=cmd_run)
    s = common(sub.add_parser("status", help="state, reason, limit usage, positions"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
    h = common(sub.add_parser("halt", help="latch HALTED and cancel non-protective orders"))
    h.add_argument("--reason", default="operator request")
    h.set_defaults(fn=cmd_control, cmd="halt")
    f = common(sub.add_parser("flatten", help="halt, cancel all, sell all positions, verify flat"))
    f.add_argument("--timeout", type=float, default=30.0)
    f.set_defaults(fn=cmd_control, cmd="flatten")
    z = common(sub.add_parser("reset", help="manual reset to ACTIVE (the only way out of HALTED/KILLED)"))
    z.add_argument("--note", default="")
    z.set_defaults(fn=cmd_control, cmd="reset")
    a = common(sub.add_parser("audit", help="audit log tools"))
    a.add_argument("action", choices=["verify"])
    a.set_defaults(fn=cmd_audit)
    x = sub.add_parser("dashboard-proxy", help="bridge stdin/stdout to the dashboard socket (run over SSH by the controller)")
    x.add_argument("--runtime-dir", help="directory of dashboard.sock (default $RUNTIME_DIRECTORY, else /run/hardkit-bot)")
    x.set_defaults(fn=cmd_dashboard_proxy)
    b = sub.add_parser("backtest", help="replay a price series through the same engine and risk code")
    b.add_argument("--config", required=True)
    b.add_argument("--csv", help="ts,open,high,low,close[,volume] file (default: generated series)")
    b.add_argument("--bars", type=int, default=20000)
    b.add_argument("--bar-seconds", type=float, default=60.0)
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_backtest)
    d = sub.add_parser("config-doc", help="print every config key, its default and meaning")
    d.set_defaults(fn=cmd_config_doc)
    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("--config", required=True)
    c.set_defaults(fn=cmd_check_config)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
