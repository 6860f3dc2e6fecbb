#!/usr/bin/python3
# Managed by hardkit (roles/integrity.py). The baseline of AIDE and its daily check.
"""hardkit-aide: build, refresh and check the AIDE baseline, naming what changed.

Installed on the host by roles/integrity.py as /usr/local/sbin/hardkit-aide; standard library
only (the VPS has python3, not hardkit's dependencies). Paths come from the command line (the
deploy and the unit pass roles/integrity_data.py's values).

    hardkit-aide --conf C --db DB --state S baseline
        no baseline yet: build it; else take the file system as it is now (run by a deploy that
        changed the host, after its changes). What it absorbed is logged.
    hardkit-aide --conf C --db DB --state S check
        first take in the files of packages dpkg installed since the last run (read from
        /var/log/dpkg.log) whose content dpkg itself still vouches for (`dpkg --verify`), then
        compare the file system with the baseline. Exit 0: nothing changed; 1: something did, the
        first lines name every changed, added and removed file; 2: AIDE or dpkg failed.

Why the upgrade step is safe: only files listed by dpkg for a package that dpkg's own log says it
installed, and only those whose digest matches the package's (a file edited after the upgrade fails
`dpkg --verify` and stays reported), plus a few files package triggers regenerate. Everything
else an upgrade might touch is still reported, so an unattended security upgrade leaves no
permanent false alarm and opens no way round the check for a change made by hand.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import syslog

DPKG_LOG = "/var/log/dpkg.log"
#: Files package triggers regenerate after an install (not in any package's file list).
TRIGGER_FILES = ("/etc/ld.so.cache", "/etc/ca-certificates.txt")
TRIGGER_PREFIXES = ("/etc/alternatives/", "/etc/ssl/certs/", "/boot/initrd.img-")
#: AIDE exit codes at or above this are errors; below, a bitmask of added (1), removed (2), changed (4).
AIDE_ERROR = 14
#: Longest --limit pattern given to AIDE in one run (PCRE2's compiled-pattern limit is 64 KiB).
LIMIT_CHARS = 20000
SECTIONS = {"Added entries:": "added", "Removed entries:": "removed", "Changed entries:": "changed"}


class ToolError(RuntimeError):
    """AIDE or dpkg failed (exit 2, said in one line)."""


def log(message: str) -> None:
    print(message, flush=True)
    syslog.syslog(syslog.LOG_NOTICE, message)


def parse_report(text: str) -> dict[str, list[str]]:
    """{"added"|"removed"|"changed": [path, ...]} from AIDE's plain report."""
    found = {kind: [] for kind in SECTIONS.values()}
    section = None
    for line in text.splitlines():
        if line in SECTIONS:
            section = SECTIONS[line]
        elif line.startswith("Detailed information") or line.startswith("The attributes of"):
            section = None
        elif section and ": /" in line:
            found[section].append(line.split(": ", 1)[1])
    return found


def summary(found: dict[str, list[str]]) -> list[str]:
    """One line per file, changed first: what the journal (and the alert) shows first."""
    return [f"{kind}: {path}" for kind in ("changed", "added", "removed") for path in found[kind]]


def aide(conf: str, *args: str) -> tuple[int, str]:
    res = subprocess.run(["aide", "--config", conf, *args], capture_output=True, text=True)
    if res.returncode >= AIDE_ERROR:
        raise ToolError(f"aide {' '.join(args)} failed ({res.returncode}): {(res.stderr or res.stdout).strip()}")
    return res.returncode, res.stdout


def install_new(db: str) -> None:
    """Put AIDE's new database in place of the baseline, root-only."""
    new = db + ".new"
    os.chmod(new, 0o600)
    os.replace(new, db)


def dpkg_log_end() -> dict:
    try:
        st = os.stat(DPKG_LOG)
    except FileNotFoundError:
        return {"inode": None, "offset": 0}
    return {"inode": st.st_ino, "offset": st.st_size}


def read_state(path: str) -> dict:
    try:
        with open(path) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def new_dpkg_lines(state: dict) -> list[str]:
    """dpkg.log lines written since `state` (across one rotation to dpkg.log.1)."""
    lines = []
    try:
        st = os.stat(DPKG_LOG)
    except FileNotFoundError:
        return lines
    offset = state.get("offset", 0)
    if state.get("inode") != st.st_ino:  # rotated: the rest of the old file, then the new one from the start
        try:
            old = DPKG_LOG + ".1"
            if os.stat(old).st_ino == state.get("inode"):
                with open(old, errors="replace") as f:
                    f.seek(offset)
                    lines += f.read().splitlines()
        except OSError:
            pass
        offset = 0
    if offset > st.st_size:
        offset = 0
    with open(DPKG_LOG, errors="replace") as f:
        f.seek(offset)
        lines += f.read().splitlines()
    return lines


def installed_packages(lines: list[str]) -> list[str]:
    """Packages dpkg's log says reached 'installed' (an install, upgrade or reinstall)."""
    pkgs = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[2] == "status" and parts[3] == "installed":
            pkgs.add(parts[4])
    return sorted(pkgs)


def package_files(pkg: str) -> set[str]:
    """The files dpkg installed for `pkg` whose content dpkg still vouches for."""
    listed = subprocess.run(["dpkg-query", "-L", pkg], capture_output=True, text=True)
    if listed.returncode != 0:
        return set()  # purged since
    files = {p for p in listed.stdout.splitlines() if p.startswith("/") and os.path.isfile(p)}
    verify = subprocess.run(["dpkg", "--verify", pkg], capture_output=True, text=True)
    # "??5?????? c /etc/x": a digest mismatch; leave those files to the check.
    bad = {line.split(None, 2)[-1] for line in verify.stdout.splitlines() if line[2:3] == "5"}
    return files - bad


def limit_patterns(paths: list[str]) -> list[str]:
    """Anchored alternations of `paths`, each short enough for one AIDE --limit."""
    chunks, current = [], []
    for path in sorted(paths):
        current.append(re.escape(path))
        if sum(len(p) + 1 for p in current) > LIMIT_CHARS:
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return [f"^({'|'.join(c)})$" for c in chunks]


def take_in_upgrades(conf: str, db: str, state_path: str) -> None:
    """Refresh the baseline for the files of packages dpkg installed since the last run."""
    state = read_state(state_path)
    end = dpkg_log_end()
    pkgs = installed_packages(new_dpkg_lines(state))
    if pkgs:
        paths = set().union(*(package_files(p) for p in pkgs))
        paths |= {p for p in TRIGGER_FILES if os.path.exists(p)}
        for prefix in TRIGGER_PREFIXES:
            folder, _, stem = prefix.rpartition("/")
            try:
                paths |= {os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(stem)}
            except OSError:
                pass
        taken = []
        for pattern in limit_patterns(sorted(paths)):
            _, out = aide(conf, "--update", "--limit", pattern)
            install_new(db)
            taken += summary(parse_report(out))
        log(f"took in {len(pkgs)} package(s) dpkg installed: {', '.join(pkgs)}"
            + (f"; {len(taken)} file(s) of theirs changed" if taken else ""))
    write_state(state_path, end)


def baseline(args) -> int:
    end = dpkg_log_end()
    if not os.path.exists(args.db):
        aide(args.conf, "--init")
        install_new(args.db)
        log(f"baseline built: {args.db}")
    else:
        _, out = aide(args.conf, "--update")
        install_new(args.db)
        absorbed = summary(parse_report(out))
        log(f"baseline refreshed after a deploy: {len(absorbed)} file(s) taken in")
        for line in absorbed:
            log(f"taken in: {line}")
    write_state(args.state, end)
    return 0


def check(args) -> int:
    if not os.path.exists(args.db):
        raise ToolError(f"no baseline at {args.db}: run a deploy")
    take_in_upgrades(args.conf, args.db, args.state)
    rc, out = aide(args.conf, "--check")
    found = parse_report(out)
    lines = summary(found)
    if rc == 0 and not lines:
        print("AIDE: no change since the baseline")
        return 0
    print(f"AIDE: {len(lines)} file(s) differ from the baseline "
          f"({len(found['changed'])} changed, {len(found['added'])} added, {len(found['removed'])} removed)")
    for line in lines:
        print(line)
    print(out, flush=True)  # AIDE's own report: which attributes changed, old and new values
    return 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hardkit-aide")
    p.add_argument("--conf", required=True, help="AIDE's configuration")
    p.add_argument("--db", required=True, help="the baseline database (its database_in)")
    p.add_argument("--state", required=True, help="where the last dpkg.log position read is kept")
    p.add_argument("command", choices=["baseline", "check"])
    args = p.parse_args(argv)
    syslog.openlog("hardkit-aide")
    os.umask(0o077)
    lock = open(os.path.join(os.path.dirname(args.db), ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # a deploy's refresh and the timer's check never overlap
    try:
        return baseline(args) if args.command == "baseline" else check(args)
    except (ToolError, OSError) as e:
        print(f"hardkit-aide: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
