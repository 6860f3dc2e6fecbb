#!/usr/bin/python3
# Managed by hardkit (roles/backup.py). Run by hardkit-backup.service and hardkit-backup-check.service.
"""hardkit-backup: the VPS's encrypted backups with restic, to a repository on a backup server over SFTP.

Installed by roles/backup.py as /usr/local/sbin/hardkit-backup; standard library only (the VPS has
python3 and Debian's restic, not hardkit's dependencies). Its values come from a JSON config the deploy
writes (CONFIG_FILE); its secrets from systemd credentials ($CREDENTIALS_DIRECTORY, LoadCredentialEncrypted=):
`restic-password` is handed to restic as a file path, `backup-ssh-key` to ssh as a key file, never a value
on a command line or in the environment.

    hardkit-backup [--config PATH] run                 back up the staged ledger, apply the retention
    hardkit-backup [--config PATH] check               restic check (the repository's structure)
    hardkit-backup [--config PATH] snapshots           the repository's snapshots as JSON
    hardkit-backup [--config PATH] restore ID DIR      restore one snapshot ("latest" too) into DIR
    hardkit-backup check-config PATH                   exit 2 with a one-line error if the config is invalid

Any failure exits non-zero with its first line naming what failed, so the unit fails and the
notifier alerts on it. The live ledger is never copied as a file: the bot's own `hardkit-bot backup` takes
it through SQLite's online backup API, run as the bot's user (the ledger's owner) by a unit of its own
(hardkit-backup-stage.service, no network, no capability) before this program's `run`; `run` copies that
closed, integrity-checked copy into the snapshot's folder, at the path every snapshot has.

Every snapshot is taken as the config's `host` (the host's inventory name, restic's `--host`), so a restore
can tell whose ledger a snapshot holds. A host that shares a repository with another host's snapshots but
has none of its own there (a replacement, deployed to take over a lost host's repository) does not back up
until `hardkit restore` has put the lost host's ledger on it (and left `restored_marker`): its fresh ledger
must not land next to the lost one's, where a restore could take it for the newest backup.
"""

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

CONFIG_FILE = "/etc/hardkit/backup.json"
#: The config's keys: where the repository is and how to reach it, what to back up, what to keep.
CONFIG_KEYS = {"repository": str, "host": str, "restored_marker": str, "port": int, "known_hosts": str,
               "cache_dir": str, "stage_dir": str, "paths": list, "retention": dict, "ledger": (dict, type(None))}
#: The ledger's key: the folder the stage unit (hardkit-backup-stage.service) wrote the bot's copy into.
LEDGER_KEYS = ("staged",)
#: Credential names ($CREDENTIALS_DIRECTORY/<name>): the repository password, the SSH key, the audit key.
PASSWORD_CRED = "restic-password"
SSH_KEY_CRED = "backup-ssh-key"
AUDIT_KEY_CRED = "audit-key"
#: Folders inside each snapshot's staging area.
LEDGER_SUBDIR = "ledger"
KEYS_SUBDIR = "keys"
RETENTION_FLAGS = {"last": "--keep-last", "hourly": "--keep-hourly", "daily": "--keep-daily",
                   "weekly": "--keep-weekly", "monthly": "--keep-monthly"}
TAG = "hardkit"
COMMAND_TIMEOUT = 3600


class Failed(Exception):
    """A step failed: its message is the unit's first journal line."""


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
    problems = [f"{k} must be a {t.__name__ if isinstance(t, type) else 'dict or null'}"
                for k, t in CONFIG_KEYS.items() if not isinstance(config.get(k), t)]
    problems += [f"unknown key {k!r}" for k in sorted(set(config) - set(CONFIG_KEYS))]
    if not problems:
        problems += [f"paths entry {p!r} is not an absolute path" for p in config["paths"]
                     if not (isinstance(p, str) and p.startswith("/"))]
        problems += [f"retention key {k!r} is not one of {', '.join(RETENTION_FLAGS)}" for k in config["retention"]
                     if k not in RETENTION_FLAGS]
        if not config["repository"].startswith("sftp:"):
            problems.append("repository must be an sftp: URL")
        if config["ledger"] is not None and set(config["ledger"]) != set(LEDGER_KEYS):
            problems.append(f"ledger must have exactly {', '.join(LEDGER_KEYS)}")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


def credential(name):
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder or not os.path.isfile(os.path.join(folder, name)):
        raise Failed(f"credential {name} is missing (run under the unit: LoadCredentialEncrypted={name})")
    return os.path.join(folder, name)


def agent_socket(config):
    """The run's agent socket: in the unit's own runtime folder ($RUNTIME_DIRECTORY), else the staging folder."""
    return os.path.join(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or config["stage_dir"], "agent.sock")


class Agent:
    """A private ssh-agent for one run, holding the backup key: ssh gets the key from it, never a key file
    (the credential holds the key as the secrets store keeps it, without a final newline, which OpenSSH's
    key file reader refuses; ssh-add reads it from stdin)."""

    def __init__(self, config):
        self.socket = agent_socket(config)
        self.proc = None

    def __enter__(self):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.proc = subprocess.Popen(["ssh-agent", "-D", "-a", self.socket], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        for _ in range(100):
            if os.path.exists(self.socket):
                break
            time.sleep(0.05)
        with open(credential(SSH_KEY_CRED), "rb") as f:
            key = f.read()
        res = subprocess.run(["ssh-add", "-q", "-"], input=key if key.endswith(b"\n") else key + b"\n",
                             env={"SSH_AUTH_SOCK": self.socket, "PATH": os.environ.get("PATH", "")},
                             capture_output=True, timeout=30)
        if res.returncode != 0:
            self.__exit__()
            raise Failed(f"the backup SSH key ({SSH_KEY_CRED}) cannot be loaded: "
                         f"{res.stderr.decode(errors='replace').strip()[-200:]}")
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def restic_base(config):
    """restic's command prefix: the repository, its password file, the cache, and ssh as the sftp command."""
    rest = config["repository"][len("sftp:"):]
    user_host = rest[:rest.index("]:") + 1] if "]:" in rest else rest.partition(":")[0]
    ssh = ["ssh", "-F", "/dev/null", "-p", str(config["port"]),
           "-o", f"IdentityAgent={agent_socket(config)}", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={config['known_hosts']}", "-o", "GlobalKnownHostsFile=/dev/null",
           "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
           user_host.replace("[", "").replace("]", ""), "-s", "sftp"]
    return ["restic", "--repo", config["repository"], "--password-file", credential(PASSWORD_CRED),
            "--cache-dir", config["cache_dir"], "--quiet",
            "-o", "sftp.command=" + " ".join(shlex.quote(a) for a in ssh)]


def restic(config, *args, what):
    """Run restic; Failed with its last error line when it fails."""
    try:
        res = subprocess.run(restic_base(config) + list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Failed(f"{what}: restic did not finish within {COMMAND_TIMEOUT} s") from None
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()] or [f"exit {res.returncode}"]
        raise Failed(f"{what} failed (restic exit {res.returncode}): {lines[-1]}\n" + "\n".join(lines[-20:]))
    return res.stdout


def repository_exists(config):
    """True when the repository answers, False when it does not exist yet; Failed when it cannot be reached."""
    try:
        restic(config, "cat", "config", what="repository check")
        return True
    except Failed as e:
        text = str(e)
        if "unable to open config file" in text or "Is there a repository at the following location" in text:
            return False
        raise


def stage(config):
    """Prepare the staging folder: the ledger as the stage unit copied it, the audit key. Returns its path."""
    root = config["stage_dir"]
    shutil.rmtree(os.path.join(root, "snapshot"), ignore_errors=True)
    snap = os.path.join(root, "snapshot")
    os.makedirs(snap, mode=0o700)
    ledger = config["ledger"]
    if ledger is None:
        return snap
    staged = ledger["staged"]
    if not os.path.isfile(os.path.join(staged, "ledger.sqlite")):
        raise Failed(f"no staged ledger in {staged}: the stage unit (hardkit-backup-stage.service) did not "
                     "leave one")
    shutil.copytree(staged, os.path.join(snap, LEDGER_SUBDIR))
    keys = os.path.join(snap, KEYS_SUBDIR)
    os.makedirs(keys, mode=0o700)
    shutil.copyfile(credential(AUDIT_KEY_CRED), os.path.join(keys, AUDIT_KEY_CRED))
    os.chmod(os.path.join(keys, AUDIT_KEY_CRED), 0o600)
    log(f"ledger staged: {', '.join(sorted(os.listdir(staged)))} from {staged}")
    return snap


def log(message):
    print(message, flush=True)


def list_snapshots(config):
    return json.loads(restic(config, "snapshots", "--json", "--tag", TAG, what="snapshot listing").strip() or "[]")


def refuse_to_back_up_over_another_host(config):
    """Failed when the repository holds snapshots of other hosts, none of this one, and this host was not
    restored from it: a replacement not restored yet would put its fresh ledger next to the lost host's."""
    if os.path.exists(config["restored_marker"]):
        return
    own = {config["host"], socket.gethostname()}   # snapshots taken before `host` was set carry the hostname
    hosts = {s.get("hostname") for s in list_snapshots(config)}
    if hosts and not hosts & own:
        raise Failed(f"not backing up: the repository {config['repository']} holds snapshots of "
                     f"{', '.join(sorted(h or '?' for h in hosts))}, none of {config['host']}, and this host was not "
                     f"restored from it (no {config['restored_marker']}): run `hardkit restore` onto it first, or "
                     "point backup_to at a repository of its own")


def cmd_run(config):
    snap = stage(config)
    try:
        if not repository_exists(config):
            restic(config, "init", what="repository init")
            log(f"repository {config['repository']} created")
        else:
            refuse_to_back_up_over_another_host(config)
        paths = [snap] + [p for p in config["paths"] if os.path.exists(p)]
        out = restic(config, "backup", "--json", "--tag", TAG, "--host", config["host"], *paths, what="backup")
        summary = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        done = [s for s in summary if s.get("message_type") == "summary"]
        if not done:
            raise Failed("backup failed: restic reported no summary")
        log(f"backup {done[-1].get('snapshot_id', '?')[:8]}: {done[-1].get('total_files_processed')} files, "
            f"{done[-1].get('data_added')} bytes added; paths {' '.join(paths)}")
        keep = [a for k, n in sorted(config["retention"].items()) for a in (RETENTION_FLAGS[k], str(n))]
        restic(config, "forget", "--tag", TAG, "--prune", *keep, what="retention (forget --prune)")
        log("retention applied: " + " ".join(keep))
    finally:
        shutil.rmtree(snap, ignore_errors=True)
    return 0


def cmd_check(config):
    restic(config, "check", what="repository check")
    log(f"repository {config['repository']}: no errors found")
    return 0


def cmd_snapshots(config):
    print(json.dumps(list_snapshots(config)))
    return 0


def cmd_restore(config, snapshot, target):
    os.makedirs(target, mode=0o700, exist_ok=True)
    restic(config, "restore", snapshot, "--target", target, what=f"restore of snapshot {snapshot}")
    log(f"snapshot {snapshot} restored into {target}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="hardkit-backup")
    p.add_argument("--config", default=CONFIG_FILE, help=f"the config (default {CONFIG_FILE})")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-config").add_argument("path")
    sub.add_parser("run")
    sub.add_parser("check")
    sub.add_parser("snapshots")
    r = sub.add_parser("restore")
    r.add_argument("snapshot")
    r.add_argument("target")
    args = p.parse_args(argv)
    try:
        config = read_config(args.path if args.cmd == "check-config" else args.config)
    except ConfigError as e:
        print(f"hardkit-backup: {e}", file=sys.stderr)
        return 2
    if args.cmd == "check-config":
        return 0
    try:
        with Agent(config):
            if args.cmd == "run":
                return cmd_run(config)
            if args.cmd == "check":
                return cmd_check(config)
            if args.cmd == "snapshots":
                return cmd_snapshots(config)
            return cmd_restore(config, args.snapshot, args.target)
    except Failed as e:
        print(f"hardkit-backup: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(f"hardkit-backup: {args.cmd} failed: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
