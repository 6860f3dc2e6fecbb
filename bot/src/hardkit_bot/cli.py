"""hardkit-bot command line: run | status | halt | flatten | reset | audit verify | dashboard-proxy | backtest |
check-config | config-doc.

Runtime contract (systemd): state in $STATE_DIRECTORY (else --state-dir), the
control socket at $RUNTIME_DIRECTORY/control.sock (else --runtime-dir, else the
state dir) with the dashboard's dashboard.sock beside it, exchange and audit-key
credentials only from $CREDENTIALS_DIRECTORY (or --audit-key-file), logs to stderr
for journald. Exit codes: 0 ok, 1 operation failed (e.g. not flat), 2 invalid
configuration, usage, ledger or key (one line), 3 bot not reachable — and then the
ledger is changed in its place only when bot.lock proves no bot runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from . import control, creds, runlock
from .audit import AuditKeyError
from .config import ConfigError, load

log = logging.getLogger("hardkit_bot")


#: The paper exchange's book in the state directory (exchange/__init__.py): backed up beside the ledger.
PAPER_EXCHANGE = "paper-exchange.sqlite"


class UsageError(Exception):
    """A user mistake: one line on stderr, exit 2, nothing traded or written."""


class Unreachable(Exception):
    """The bot cannot be reached and nothing may be done in its place: exit 3."""


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
        if len(e.problems) == 1:   # e.g. a file that is not UTF-8 or not TOML at all: one line, like every exit 2
            print(f"hardkit-bot: configuration {path}: {e.problems[0]}; nothing was traded", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"hardkit-bot: configuration {path} has {len(e.problems)} problem(s); nothing was traded:", file=sys.stderr)
        for p in e.problems:
            print(f"  - {p}", file=sys.stderr)
        raise SystemExit(2) from None


def _audit_key(args) -> bytes | None:
    try:
        return creds.load_audit_key(getattr(args, "audit_key_file", None))
    except creds.CredentialError as e:
        raise UsageError(str(e)) from None


def _open_store(path: Path, key: bytes | None = None, clock=None, readonly: bool = False):
    """The ledger, or a UsageError naming what is wrong with the file (never a traceback)."""
    from .store import Store
    try:
        return Store(path, clock or time.time, key, readonly=readonly)
    except sqlite3.DatabaseError as e:
        raise UsageError(f"ledger {path} is not a usable SQLite ledger ({e}); nothing was traded") from None
    except AuditKeyError as e:
        raise UsageError(str(e)) from None


def cmd_run(args) -> int:
    cfg = _load_config(args.config)
    sd = _state_dir(args)
    if sd is None:
        raise UsageError("no state directory ($STATE_DIRECTORY or --state-dir)")
    key = _audit_key(args)
    try:
        sd.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = runlock.try_lock(sd)
    except OSError as e:  # e.g. a regular file at that path, or no permission
        raise UsageError(f"state directory {sd} is not usable ({e.strerror}); nothing was traded") from None
    if lock is None:
        raise UsageError(f"another bot already runs on {sd}")
    from .control import ControlServer
    from .engine import Engine
    from .exchange import build
    from .exchange.base import ExchangeError
    from .inhibitor import RebootInhibitor
    clock = time.time
    store = _open_store(sd / "ledger.sqlite", key, clock)
    if key is None:
        log.warning("no audit key ($CREDENTIALS_DIRECTORY/%s or --audit-key-file): the audit chain is plain "
                    "SHA-256, which detects damage but not a deliberate rewrite", creds.AUDIT_KEY_FILE)
    try:
        exchange = build(cfg, sd, clock)
    except Exception as e:  # credentials, unknown exchange, missing extra
        log.error("cannot set up the exchange: %s", e)
        return 2
    engine = Engine(cfg, store, exchange, clock, inhibitor=RebootInhibitor(args.inhibit_dir),
                    metrics_file=args.metrics_file or cfg.metrics["textfile"] or None)
    engine.anchor_audit_head()
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
        engine.record_equity()
        view = engine.sm.view()
        log.info("stopped in %s (%s)", view.state.value, view.reason)
        engine.anchor_audit_head()
        store.close()
    return 0


def _ask(args, req: dict, timeout: float) -> tuple[dict | None, str]:
    """The bot's answer over its socket, or None and why there is none."""
    sock = _socket(args)
    if sock is None:
        return None, "no control socket path ($RUNTIME_DIRECTORY, --runtime-dir, --socket or a state dir)"
    if not sock.exists():
        return None, f"control socket {sock} does not exist"
    try:
        return control.send(sock, req, timeout), ""
    except (TimeoutError, OSError) as e:
        return None, f"control socket {sock} did not answer ({type(e).__name__}: {e})"
    except ValueError as e:
        return None, f"control socket {sock} answered garbage ({e})"


def _ledger(args) -> Path | None:
    sd = _state_dir(args)
    return sd / "ledger.sqlite" if sd is not None and (sd / "ledger.sqlite").exists() else None


def _no_bot_lock(sd: Path, why: str):
    """The bot.lock, held: proof that no bot runs on `sd`. Otherwise Unreachable (exit 3)."""
    try:
        lock = runlock.try_lock(sd)
    except OSError as e:
        raise Unreachable(f"{why}, and {sd / runlock.NAME} cannot be checked ({e.strerror}): whether a bot runs "
                          "there is unknown, so the ledger was NOT changed") from None
    if lock is None:
        raise Unreachable(f"{why}, but a bot IS running on {sd} (it holds {runlock.NAME}): the ledger was NOT "
                          "changed. Stop the unit (systemctl stop hardkit-bot) or give the socket it serves "
                          "(--runtime-dir / --socket), then retry")
    return lock


def _bot_running(sd: Path) -> bool | None:
    """True when a bot holds bot.lock, False when it is free, None when it cannot be checked."""
    try:
        lock = runlock.try_lock(sd)
    except OSError:
        return None
    if lock is None:
        return True
    lock.close()
    return False


def cmd_status(args) -> int:
    st, why = _ask(args, {"cmd": "status"}, 30)
    if st is None:
        ledger = _ledger(args)
        if ledger is None:
            raise Unreachable(f"bot not reachable ({why}) and no ledger found")
        from . import offline
        store = _open_store(ledger, readonly=True)
        try:
            st = offline.status(store)
        finally:
            store.close()
        running = _bot_running(ledger.parent)
        if running is not False:   # never claim "not running" without the lock's proof
            st["running"] = running
            st["note"] = (f"bot not reachable ({why}); the state below is the ledger's, and a bot "
                          + ("IS running" if running else "may be running") + " on this state directory")
    st.pop("ok", None)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"state: {st['state']}  ({st['reason']}, since {st['since']})")
    if "note" in st:
        print(st["note"])
    for p in st.get("positions", []):
        print(f"position {p['instrument']}: {p['qty']} @ {p['avg_price']}"
              + (f"  last {p['last']}  stop {p['stop']}" if "last" in p else ""))
    for u in st.get("limits", []):
        print(f"  {u['name']:<28} {u['used']:>14.4f} / {u['limit']:<14.4f} {u['pct']:6.1f}%")
    return 0


#: Seconds `halt` and `reset` wait for the running bot's answer unless told otherwise (--wait).
CONTROL_WAIT_S = 60.0


def cmd_control(args) -> int:
    kw = {"halt": {"reason": getattr(args, "reason", "")}, "flatten": {"timeout": getattr(args, "timeout", 30.0)},
          "reset": {"note": getattr(args, "note", ""), "new_day": getattr(args, "new_day", False)}}[args.cmd]
    wait = kw["timeout"] + 30 if args.cmd == "flatten" else args.wait
    resp, why = _ask(args, {"cmd": args.cmd, **kw}, wait)
    if resp is None:
        resp = _offline_state_change(args, kw, why)
    print(json.dumps(resp, indent=2, default=str))
    return 0 if resp.get("ok") else 1


def _offline_state_change(args, kw: dict, why: str) -> dict:
    """halt/reset with no bot running, proven by bot.lock (held while writing the ledger)."""
    if args.cmd == "flatten":
        raise Unreachable(f"bot not reachable ({why}): flatten needs the running bot (it trades)")
    ledger = _ledger(args)
    if ledger is None:
        raise Unreachable(f"bot not reachable ({why}) and no ledger found (is it running? check the socket path)")
    tz = _load_config(args.config).tz if getattr(args, "config", None) else None
    if kw.get("new_day") and tz is None:
        raise UsageError("reset --new-day without a running bot needs --config (the day is local to bot.timezone)")
    lock = _no_bot_lock(ledger.parent, f"bot not reachable ({why})")
    from . import offline
    try:
        store = _open_store(ledger, _audit_key(args))
        try:
            if args.cmd == "halt":
                return offline.halt(store, kw["reason"])
            return offline.reset(store, kw["note"], kw["new_day"], tz)
        finally:
            store.close()
    finally:
        lock.close()


def cmd_audit(args) -> int:
    ledger = _ledger(args)
    if ledger is None:
        raise Unreachable("no ledger found ($STATE_DIRECTORY or --state-dir)")
    key = _audit_key(args)
    store = _open_store(ledger, readonly=True)
    try:
        res = store.verify_audit(key)
    finally:
        store.close()
    if res.needs_key:
        raise UsageError(res.problem)
    if res.ok:
        print(f"audit log OK: {res.records} records, head {res.head} "
              f"({'HMAC-SHA256, keyed' if res.keyed else 'plain SHA-256: unkeyed, detects damage but not a rewrite'})")
        return 0
    print(f"audit log TAMPERED at record {res.bad_seq}: {res.problem}", file=sys.stderr)
    return 1


def cmd_backup(args) -> int:
    """The ledger through the store's online backup, plus its state file, into an empty folder."""
    ledger = _ledger(args)
    if ledger is None:
        raise Unreachable("no ledger found ($STATE_DIRECTORY or --state-dir)")
    dest = Path(args.to)
    if not dest.is_dir():
        raise UsageError(f"--to {dest}: not an existing folder")
    if any(dest.iterdir()):
        raise UsageError(f"--to {dest}: not empty (a backup goes into an empty folder)")
    from .store import copy_database
    store = _open_store(ledger, readonly=True)
    try:
        latch = store.backup_to(dest / ledger.name)
        exchange = ledger.parent / PAPER_EXCHANGE
        if exchange.exists():   # the paper exchange lives here too: its book is "the exchange" of a restore
            copy_database(exchange, dest / PAPER_EXCHANGE)
    except (ValueError, sqlite3.DatabaseError) as e:
        print(f"hardkit-bot: backup of {ledger} failed: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(json.dumps({"ledger": str(dest / ledger.name), "state": latch.state, "reason": latch.reason,
                      "since": latch.since}))
    return 0


def cmd_restore(args) -> int:
    """Put a backup's ledger (and paper exchange) in place of this state directory's, with no bot running:
    the copy is integrity-checked, its latch must agree with its state file, and its audit chain must
    verify with this host's audit key before anything is replaced. The replaced files are kept aside."""
    sd = _state_dir(args)
    if sd is None:
        raise UsageError("no state directory ($STATE_DIRECTORY or --state-dir)")
    src = Path(getattr(args, "from")) / "ledger.sqlite"
    if not src.is_file():
        raise UsageError(f"--from {src.parent}: no ledger.sqlite there (a folder made by `hardkit-bot backup`)")
    key = _audit_key(args)
    sd.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _no_bot_lock(sd, "restore needs the bot stopped")
    try:
        backup = _open_store(src, key, readonly=True)
        try:
            if backup.latch_doubt:
                raise UsageError(f"the backup's latched state is in doubt ({backup.latch_doubt}): not restored")
            check = backup.verify_audit(key)
            if not check.ok:
                raise UsageError(f"the backup's audit chain does not verify: {check.problem}; not restored")
            aside = sd / f"replaced-{int(time.time())}"
            moved = [p for p in sd.iterdir() if p.name.startswith(("ledger.sqlite", PAPER_EXCHANGE))]
            if moved:
                aside.mkdir(mode=0o700)
                for p in moved:
                    p.rename(aside / p.name)
            latch = backup.backup_to(sd / "ledger.sqlite")
            records = check.records
            held = {k: str(p.qty) for k, p in backup.positions().items() if p.qty}
            from .store import LOSS_STREAK
            streak = backup.get_meta(LOSS_STREAK)
        finally:
            backup.close()
        if (src.parent / PAPER_EXCHANGE).exists():
            from .store import copy_database
            copy_database(src.parent / PAPER_EXCHANGE, sd / PAPER_EXCHANGE)
    finally:
        lock.close()
    print(json.dumps({"restored": str(sd / "ledger.sqlite"), "state": latch.state, "reason": latch.reason,
                      "positions": held, "loss_streak": streak or 0,
                      "audit_records": records, "replaced": str(aside) if moved else None}))
    return 0


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
    problems = _referenced_file_problems(cfg)
    if problems:
        print(f"hardkit-bot: configuration {args.config}: {len(problems)} problem(s) in the files it points to:",
              file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    print(f"{args.config}: OK ({len(cfg.instruments)} instruments, exchange {cfg.exchange['kind']})")
    return 0


def _referenced_file_problems(cfg) -> list[str]:
    """Read every file the config names the way `run` would: a garbage CSV or CA bundle fails here."""
    import ssl

    from .exchange.base import BadExchangeData
    from .exchange.market import load_csv
    x, problems = cfg.exchange, []
    if x["kind"] == "paper" and x["series"] != "generated":
        try:
            load_csv(x["series"])
        except (BadExchangeData, OSError, UnicodeDecodeError) as e:
            problems.append(f"exchange.series: {x['series']}: {e}")
    if x["ca_bundle"]:
        try:
            ssl.create_default_context(cafile=x["ca_bundle"])
        except (ssl.SSLError, OSError, ValueError) as e:
            problems.append(f"exchange.ca_bundle: {x['ca_bundle']}: not a PEM bundle of CA certificates ({e})")
    tf = cfg.metrics["textfile"]
    if tf and not os.access(Path(tf).parent, os.W_OK):
        problems.append(f"metrics.textfile: {tf}: its directory is missing or not writable")
    return problems


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
        sp.add_argument("--audit-key-file", help="audit chain HMAC key (default $CREDENTIALS_DIRECTORY/audit-key; "
                                                 "development and tests)")
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
    wait_help = ("seconds to wait for the running bot's answer (default %(default)s); a reset the bot reads "
                 "after that is refused, never executed late")
    h = common(sub.add_parser("halt", help="latch HALTED and cancel non-protective orders"))
    h.add_argument("--reason", default="operator request")
    h.add_argument("--wait", type=float, default=CONTROL_WAIT_S, help=wait_help)
    h.set_defaults(fn=cmd_control, cmd="halt")
    f = common(sub.add_parser("flatten", help="halt, cancel all, sell all positions, verify flat"))
    f.add_argument("--timeout", type=float, default=30.0)
    f.set_defaults(fn=cmd_control, cmd="flatten")
    z = common(sub.add_parser("reset", help="manual reset to ACTIVE (the only way out of HALTED/KILLED)"))
    z.add_argument("--note", default="")
    z.add_argument("--wait", type=float, default=CONTROL_WAIT_S, help=wait_help)
    z.add_argument("--new-day", action="store_true", help="also re-anchor today's daily loss at the equity now")
    z.add_argument("--config", help="bot config (only needed for --new-day while the bot is not running)")
    z.set_defaults(fn=cmd_control, cmd="reset")
    a = common(sub.add_parser("audit", help="audit log tools"))
    a.add_argument("action", choices=["verify"])
    a.set_defaults(fn=cmd_audit)
    k = common(sub.add_parser("backup", help="copy the ledger (online backup API) and its state file into a folder"))
    k.add_argument("--to", required=True, help="an existing, empty folder")
    k.set_defaults(fn=cmd_backup)
    w = common(sub.add_parser("restore", help="replace the ledger with a backup's (bot stopped; checked first)"))
    w.add_argument("--from", required=True, help="a folder made by `hardkit-bot backup`")
    w.set_defaults(fn=cmd_restore)
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
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"hardkit-bot: {e}", file=sys.stderr)
        return 2
    except Unreachable as e:
        print(f"hardkit-bot: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
