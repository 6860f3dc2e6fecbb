"""Runs the pyinfra deploy for an inventory: check secrets, probe logins, pre-flight, deliver the
bot's credentials (deploy/credentials.py, outside pyinfra), then pyinfra itself.

pyinfra runs as a subprocess on a *resolved* copy of the operator's inventory: the same hosts
and data plus the login chosen for this run (bootstrap user or admin with sudo). The copy holds
no secret (only paths and names, among them the credentials that changed) and lives in a private
temporary folder removed afterwards.
Results are read from pyinfra's `--json` output, never from its text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from deploy import alert_key, connect, credentials, host_times, provenance, totp_seeds
from deploy.inventory import Host, Inventory
from roles.access_data import CONNECTED_SSHD_PORT_KEY, FIXED_PORT_KEY, SSH_ALLOW_FROM
from roles.alerts_data import KEY_CHANGED_KEY
from roles.bot_config import BOT_ENABLED
from roles.record import RUN_KEY
from roles.second_factor_data import automation_networks, enabled as second_factor_enabled
from roles.secrets_data import CREDENTIALS_CHANGED_KEY

REPO_ROOT = Path(__file__).resolve().parent.parent
SITE = REPO_ROOT / "deploy" / "site.py"
#: pyinfra's settings for every run (read before the deploy file, kept for the whole run).
PYINFRA_CONFIG = REPO_ROOT / "deploy" / "pyinfra_config.py"


@dataclass
class HostResult:
    name: str
    login: str = ""
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str = ""  # set when the host was refused before pyinfra ran
    credentials: credentials.Delivery | None = None  # names sent/removed (would be, with --dry)
    totp_seeds: credentials.Delivery | None = None  # the same for the people's TOTP seeds

    @property
    def ok(self) -> bool:
        return not self.failed and not self.error


@dataclass
class RunResult:
    hosts: dict[str, HostResult]
    raw: dict | None
    returncode: int
    host_times: dict[str, list[list[float]]] = field(default_factory=dict, repr=False)  # deploy/host_times.py

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(h.ok for h in self.hosts.values())

    @property
    def changed_ops(self) -> int:
        return sum(len(h.changed) for h in self.hosts.values())


def preflight(hosts: list[Host]) -> tuple[dict[str, connect.Login], dict[str, str]]:
    """Resolve each host's login and check the lockout rules; return (logins, refusals). Each login keeps
    its connection open for the credential delivery: the caller ends them (close_logins)."""
    logins: dict[str, connect.Login] = {}
    refusals: dict[str, str] = {}

    def one(h: Host):
        try:
            return h, connect.resolve(h, keep=True), None
        except connect.LoginError as e:
            return h, None, str(e)

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        for h, login, err in pool.map(one, hosts):
            if err:
                refusals[h.name] = err
                continue
            logins[h.name] = login  # a refused one is closed below
            allow = h.get(SSH_ALLOW_FROM)
            if not connect.address_allowed(login.client_address, allow):
                refusals[h.name] = (
                    f"{h.name}: refusing to deploy: this controller reaches the host from "
                    f"{login.client_address or 'an unknown address'}, which is not in ssh_allow_from "
                    f"{allow}; the firewall would lock you out. Add it to the inventory's ssh_allow_from.")
                continue
            if second_factor_enabled(h.data) and not connect.address_allowed(login.client_address,
                                                                             automation_networks(h.data)):
                refusals[h.name] = (
                    f"{h.name}: refusing to deploy: this controller reaches the host from {login.client_address}, "
                    f"which is not in automation_from {automation_networks(h.data)}; with second_factor_admins "
                    "set, the admin's key works only from there. Add it to the inventory's automation_from.")
                continue
    for name in refusals:
        if name in logins:
            logins.pop(name).close()
    return logins, refusals


def close_logins(logins: dict[str, connect.Login]) -> None:
    """End the connections the pre-flight kept open for the credential delivery (pyinfra logs in on its own)."""
    for login in logins.values():
        login.close()


def write_resolved_inventory(inv: Inventory, hosts: list[Host], logins: dict[str, connect.Login], folder: Path,
                             changed_credentials: dict[str, list[str]] | None = None,
                             changed_alert_key: dict[str, list[str]] | None = None) -> Path:
    groups: dict[str, list] = {}
    run = provenance.run_facts()
    for h in hosts:
        if h.name not in logins:
            continue
        login = logins[h.name]
        data = {k: v for k, v in h.data.items() if k not in ("lab", "ssh_port")}
        data.update({"ssh_user": login.user, "_sudo": login.sudo,
                     "ssh_port": login.port, FIXED_PORT_KEY: login.sshd_port is None,
                     CONNECTED_SSHD_PORT_KEY: login.sshd_port,
                     CREDENTIALS_CHANGED_KEY: (changed_credentials or {}).get(h.name, []), RUN_KEY: run,
                     KEY_CHANGED_KEY: (changed_alert_key or {}).get(h.name, [])})
        for g in h.groups:
            groups.setdefault(g, []).append((h.name, data))
    lines = [f'"""Resolved copy of {inv.path} for one hardkit run."""']
    for g, entries in groups.items():
        lines.append(f"{g} = {entries!r}")
    path = folder / "inventory.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def deploy(inv: Inventory, hosts: list[Host], *, dry: bool = False, extra_args: list[str] | None = None,
           stream=sys.stderr, site: Path = SITE, identity: str | None = None) -> RunResult:
    """Decrypt and check every host's credentials (SecretsError) and build the bot's release
    (ReleaseError), both before any host is touched, probe the logins, deliver the credentials, then
    run pyinfra on the hosts that passed."""
    values = credentials.wanted_values(hosts, identity)
    wanted, seeds = credentials.bot_credentials(values), totp_seeds.wanted_seeds(hosts, values)
    alert_keys = alert_key.wanted_keys(hosts, values)
    del values
    if any(BOT_ENABLED.value(h.data) for h in hosts):
        from roles import bot_release
        bot_release.current()  # built here, before any host is touched (ReleaseError); pyinfra finds it cached
    logins, refusals = preflight(hosts)
    try:  # over the pre-flight's own connection to each host: one login per host before pyinfra's
        deliveries, failures = credentials.sync_all(hosts, logins, wanted, dry=dry)
        seed_deliveries, seed_failures = credentials.sync_all(hosts, {n: lg for n, lg in logins.items()
                                                                      if n not in failures}, seeds, dry=dry,
                                                              store=totp_seeds.STORE)
        key_deliveries, key_failures = credentials.sync_all(hosts, {n: lg for n, lg in logins.items()
                                                                    if n not in failures and n not in seed_failures},
                                                            alert_keys, dry=dry, store=alert_key.STORE)
    finally:
        close_logins(logins)
    del wanted, seeds, alert_keys  # the plaintext is not needed any more
    for name, why in {**key_failures, **seed_failures, **failures}.items():
        refusals[name] = why
        del logins[name]
    results = {h.name: HostResult(h.name) for h in hosts}
    for name, why in refusals.items():
        results[name].error = why
    for name, login in logins.items():
        results[name].login = login.user + (" (sudo)" if login.sudo else "")
        results[name].credentials = deliveries.get(name)
        results[name].totp_seeds = seed_deliveries.get(name)
    if not logins:
        return RunResult(results, None, 1)
    with tempfile.TemporaryDirectory(prefix="hardkit-run-") as tmp:
        os.chmod(tmp, 0o700)
        resolved = write_resolved_inventory(inv, hosts, logins, Path(tmp),
                                            {n: d.changed for n, d in deliveries.items()},
                                            {n: d.changed for n, d in key_deliveries.items()})
        cmd = [sys.executable, "-m", "pyinfra", "--config", str(PYINFRA_CONFIG), str(resolved), str(site), "--json"]
        # -y skips pyinfra's change detection: a dry run without it plans what would change (raw["plan"]).
        cmd.append("--dry" if dry else "-y")
        cmd += extra_args or []
        times = Path(tmp) / "host-times.json"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   **{host_times.ENV: str(times)})
        returncode, stdout, tail = _run_teeing_stderr(cmd, env, stream)
        intervals = host_times.read(times)
    raw = _parse_json(stdout)
    if raw and raw.get("results"):
        for op in raw["results"]["operations"]:
            for key, bucket in (("success", "changed"), ("no_change", "unchanged"), ("error", "failed")):
                for name in op[key]:
                    if name in results:
                        getattr(results[name], bucket).append(op["name"])
        for name in raw["results"].get("failed_hosts", []):
            if name in results and not results[name].failed:
                results[name].failed.append("(host failed)")
    elif returncode != 0:
        # When every host fails pyinfra prints no JSON: keep what it said about each host.
        for name in logins:
            results[name].failed.append(pyinfra_stopped(tail, name))
    rc = returncode if not refusals else (returncode or 1)
    return RunResult(results, raw, rc, intervals)


#: pyinfra's per-host status lines, which say nothing about why a host failed.
PYINFRA_STATUS_LINES = frozenset({"No changes", "Success", "Changed", "Connected"})


def pyinfra_stopped(tail: list[str], name: str) -> str:
    """Why pyinfra stopped for host `name`, from its last lines: the operation the host last said
    something in, and what it said there besides pyinfra's status lines (the summary's first error);
    when the host said nothing, the run's own error (an exception in the deploy code stops every host)."""
    op, said = None, []
    for line in tail:
        text = line.strip()
        if text.startswith("--> Starting operation:"):
            op = text.split(":", 1)[1].strip()
        elif text.startswith(f"[{name}] "):
            what = text.split("] ", 1)[1].strip()
            if what and what not in PYINFRA_STATUS_LINES:
                said.append((op, what))
    if not said:
        return run_error(tail) or "pyinfra stopped and said nothing about this host (-v shows its output)"
    last_op = said[-1][0]
    lines = [what for where, what in said if where == last_op][-6:]
    return "pyinfra stopped" + (f" at {last_op!r}" if last_op else "") + ": " + " / ".join(lines)


#: What pyinfra says when it gives up on the whole run because every host already failed: a
#: consequence, not a cause.
PYINFRA_NO_HOSTS = "No hosts remaining!"


def run_error(tail: list[str]) -> str | None:
    """The error that stopped the whole pyinfra run, if its output has one: an exception raised while
    it prepared the deploy (its type and message, and the message's last line when it runs on), or
    a `pyinfra error:` line."""
    for i, line in enumerate(tail):
        if line.startswith("--> An exception occurred in:"):
            rest = tail[i + 1:]
            where = line.split(":", 1)[1].strip().rstrip(":")
            ends = [j for j, t in enumerate(rest) if t and not t[0].isspace() and not t.startswith(("Traceback", "-->"))]
            if not ends:
                return f"pyinfra stopped on an exception in {where}"
            first = rest[ends[0]].strip()
            after = [t.strip() for t in rest[ends[0] + 1:] if t.strip() and not t.startswith("-->")]
            last = f" ... {after[-1]}" if after and after[-1] != first else ""
            return f"pyinfra stopped on an exception in {where}: {first}{last}"
        if line.startswith("--> pyinfra error:"):
            what = line.split(":", 1)[1].strip()
            if what and what != PYINFRA_NO_HOSTS:
                return f"pyinfra stopped: {what}"
    return None


def _run_teeing_stderr(cmd: list[str], env: dict, stream) -> tuple[int, str, list[str]]:
    """Run pyinfra; its progress goes to `stream` as it comes, and the last lines are kept for the summary."""
    from collections import deque
    from threading import Thread

    tail: deque[str] = deque(maxlen=400)  # an exception's traceback and the output it quotes
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)

    def pump():
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))
            if stream not in (None, subprocess.DEVNULL):
                stream.write(line)
                stream.flush()

    t = Thread(target=pump, daemon=True)
    t.start()
    stdout = proc.stdout.read()
    proc.wait()
    t.join()
    return proc.returncode, stdout, list(tail)


def _parse_json(stdout: str) -> dict | None:
    text = stdout.strip()
    if not text:
        return None
    start = text.find("{")
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None
