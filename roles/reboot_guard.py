#!/usr/bin/python3
# Managed by hardkit (roles/updates.py). The only thing that reboots this host for updates:
# unattended-upgrades installs, this guard decides when the reboot happens.
"""hardkit-reboot-guard: reboot for pending updates only inside the window and never while held.

Installed on the host by roles/updates.py as /usr/local/sbin/hardkit-reboot-guard; standard
library only (the VPS has python3, not hardkit's dependencies). Its values come from a small
JSON config the deploy writes (CONFIG_FILE): {"inhibit_dir": PATH, "state_file": PATH}.

    hardkit-reboot-guard [--config PATH] status [--json]   is a reboot required, since when, what holds it
    hardkit-reboot-guard [--config PATH] run [--max-wait S] [--poll S] [--dry-run]
                                              reboot now if required and nothing holds it; while
                                              held, re-check every --poll seconds for --max-wait
    hardkit-reboot-guard check-config PATH    exit 2 with a one-line error if the config is invalid

A reboot is required when /run/reboot-required exists (written by the kernel's and libc's
postinst hooks) or, on a VM or metal, when needrestart reports a newer kernel than the running one.

Holders: one JSON file per holder in the config's inhibit_dir/
    {"holder": "...", "reason": "...", "since": "ISO8601", "pid": N}
A file whose pid is dead is stale: ignored and logged. A file that cannot be read or parsed
holds the reboot (an unreadable inhibitor must not be mistaken for none). systemd-logind
"block" inhibitor locks on shutdown hold it too (systemd-inhibit --what=shutdown --mode=block).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

#: Where the deploy writes this tool's config.
CONFIG_FILE = "/etc/hardkit/reboot-guard.json"
#: The config's keys, each an absolute path: the holders' folder and where the last decision is kept.
CONFIG_KEYS = ("inhibit_dir", "state_file")
REQUIRED_FILE = "/run/reboot-required"
REQUIRED_PKGS = "/run/reboot-required.pkgs"
#: Set from the config by configure() before any command runs.
INHIBIT_DIR = ""
STATE_FILE = ""


class ConfigError(ValueError):
    """The config is missing or malformed (said in one line, exit 2)."""


def read_config(path):
    """The config as a dict, every problem listed in one ConfigError."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read a JSON object: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    problems = [f"{k} must be an absolute path, not {config.get(k)!r}" for k in CONFIG_KEYS
                if not (isinstance(config.get(k), str) and config[k].startswith("/"))]
    problems += [f"unknown key {k!r}" for k in sorted(set(config) - set(CONFIG_KEYS))]
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


def configure(path=CONFIG_FILE):
    """Load the config into the module's settings."""
    global INHIBIT_DIR, STATE_FILE
    config = read_config(path)
    INHIBIT_DIR, STATE_FILE = config["inhibit_dir"], config["state_file"]


def log(message):
    print(message, flush=True)


def iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def in_container():
    return subprocess.run(["systemd-detect-virt", "--container", "--quiet"]).returncode == 0


def kernel_pending():
    """(since, reason) when a newer kernel than the running one is installed, else None."""
    if in_container():
        return None  # a container runs its host's kernel: rebooting it changes nothing
    try:
        out = subprocess.run(["needrestart", "-b", "-k"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    if fields.get("NEEDRESTART-KSTA", "1").strip() not in ("2", "3"):
        return None
    expected = fields.get("NEEDRESTART-KEXP", "").strip()
    try:
        since = os.stat(f"/boot/vmlinuz-{expected}").st_mtime
    except OSError:
        since = time.time()
    return since, f"kernel {expected} installed, {fields.get('NEEDRESTART-KCUR', '?').strip()} running"


def required():
    """(since, reasons) of a pending reboot, or (None, [])."""
    since, reasons = None, []
    try:
        since = os.stat(REQUIRED_FILE).st_mtime
        pkgs = []
        if os.path.exists(REQUIRED_PKGS):
            with open(REQUIRED_PKGS) as f:
                pkgs = sorted({line.strip() for line in f if line.strip()})
        reasons.append(f"{REQUIRED_FILE} ({', '.join(pkgs) or 'no package list'})")
    except FileNotFoundError:
        pass
    kernel = kernel_pending()
    if kernel:
        since = min(since, kernel[0]) if since else kernel[0]
        reasons.append(kernel[1])
    return since, reasons


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_holders():
    """(holders, stale): inhibitor files that hold the reboot, and stale ones (dead pid)."""
    holders, stale = [], []
    try:
        names = sorted(os.listdir(INHIBIT_DIR))
    except FileNotFoundError:
        return holders, stale
    for name in names:
        if name.startswith("."):
            continue  # a holder's temporary file before its atomic rename
        path = os.path.join(INHIBIT_DIR, name)
        try:
            with open(path) as f:
                entry = json.loads(f.readline())
            pid = entry["pid"]
            if not isinstance(entry, dict) or not isinstance(pid, int) or isinstance(pid, bool):
                raise ValueError("pid is not a number")
        except (OSError, ValueError, KeyError, TypeError) as e:
            holders.append({"source": path, "holder": name, "reason": f"unreadable inhibitor ({e}): holding to be safe"})
            continue
        item = {"source": path, "holder": str(entry.get("holder", name)), "reason": str(entry.get("reason", "")),
                "since": entry.get("since"), "pid": pid}
        (holders if pid_alive(pid) else stale).append(item)
    return holders, stale


def logind_holders():
    """systemd-logind block inhibitors on shutdown."""
    cmd = ["busctl", "--json=short", "call", "org.freedesktop.login1", "/org/freedesktop/login1",
           "org.freedesktop.login1.Manager", "ListInhibitors"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        rows = json.loads(res.stdout)["data"][0] if res.returncode == 0 else []
    except (OSError, ValueError, KeyError, IndexError, subprocess.TimeoutExpired):
        return []
    return [{"source": "systemd-logind", "holder": who, "reason": why, "pid": pid}
            for what, who, why, mode, uid, pid in rows if mode == "block" and "shutdown" in what.split(":")]


def evaluate():
    since, reasons = required()
    holders, stale = file_holders()
    holders += logind_holders()
    now = time.time()
    return {
        "checked": iso(now),
        "required": since is not None,
        "pending_since": iso(since) if since else None,
        "pending_seconds": int(now - since) if since else 0,
        "reasons": reasons,
        "holders": holders,
        "stale": stale,
        "decision": ("none-required" if since is None else "held" if holders else "reboot"),
    }


def save(state):
    try:
        os.makedirs(os.path.dirname(STATE_FILE), exist_ok=True)
        tmp = STATE_FILE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, STATE_FILE)
    except OSError as e:
        log(f"cannot write {STATE_FILE}: {e}")


def describe(h):
    pid = f" pid {h['pid']}" if h.get("pid") else ""
    return f"{h['holder']} ({h['source']}{pid}): {h.get('reason') or 'no reason given'}"


def run(args):
    deadline = time.monotonic() + args.max_wait
    last = None
    while True:
        state = evaluate()
        for s in state["stale"]:
            log(f"ignoring stale inhibitor {describe(s)}: process {s['pid']} is gone")
        if not state["required"]:
            log("no reboot required")
            save(state)
            return 0
        summary = (state["decision"], tuple(h["source"] + h["holder"] for h in state["holders"]))
        if state["decision"] == "held":
            if summary != last:
                log(f"reboot required since {state['pending_since']} ({'; '.join(state['reasons'])}) "
                    f"but held by: " + "; ".join(describe(h) for h in state["holders"]))
            last = summary
            save(state)
            if time.monotonic() + args.poll > deadline:
                log(f"window closed: reboot still pending since {state['pending_since']}")
                return 0
            time.sleep(args.poll)
            continue
        log(f"rebooting: required since {state['pending_since']} ({'; '.join(state['reasons'])}); nothing holds it")
        state["decision"] = "rebooting" if not args.dry_run else "would-reboot"
        save(state)
        if args.dry_run:
            return 0
        # --check-inhibitors=yes: a logind block lock taken since our look still stops the reboot.
        res = subprocess.run(["systemctl", "reboot", "--check-inhibitors=yes"], capture_output=True, text=True)
        if res.returncode == 0:
            return 0
        log(f"systemctl reboot refused: {res.stderr.strip()}")
        if time.monotonic() + args.poll > deadline:
            return 0
        time.sleep(args.poll)


def main(argv=None):
    p = argparse.ArgumentParser(prog="hardkit-reboot-guard")
    p.add_argument("--config", default=CONFIG_FILE, help=f"the guard's config (default {CONFIG_FILE})")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check-config")
    c.add_argument("path")
    s = sub.add_parser("status")
    s.add_argument("--json", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--max-wait", type=int, default=0, help="keep re-checking a held reboot this long (seconds)")
    r.add_argument("--poll", type=int, default=30)
    r.add_argument("--dry-run", action="store_true", help="decide and log, but do not reboot")
    args = p.parse_args(argv)
    try:
        configure(args.path if args.cmd == "check-config" else args.config)
    except ConfigError as e:
        print(f"hardkit-reboot-guard: {e}", file=sys.stderr)
        return 2
    if args.cmd == "check-config":
        return 0
    if args.cmd == "status":
        state = evaluate()
        if args.json:
            print(json.dumps(state))
        else:
            print(f"decision: {state['decision']}")
            if state["required"]:
                print(f"reboot required since {state['pending_since']} ({state['pending_seconds']} s): "
                      + "; ".join(state["reasons"]))
            for h in state["holders"]:
                print(f"held by {describe(h)}")
            for h in state["stale"]:
                print(f"stale (ignored) {describe(h)}")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
