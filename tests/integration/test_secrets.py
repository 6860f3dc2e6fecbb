"""Canary: a secret with a unique random marker goes from the repository's age file to a fresh lab
target's credential store, and its plaintext shows up nowhere else.

The marker (and its base64 and hex forms) is searched for on the target's whole filesystem but
/proc and /sys, in its journal, in everything hardkit and pyinfra printed (normal, --json,
--debug, --dry --diff), in the repository tree and the controller's temp folders, and in every
process's command line and environment sampled during the deploys (nspawn targets share this
machine's kernel, so /proc here shows the target's processes too). The marker only ever reaches
the target on a command's stdin. Each search is first shown to find a control marker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deploy import runner
from deploy.inventory import load
from roles.bot_paths import BOT_USER, CRED_PREFIX, CREDSTORE, UNIT as BOT_UNIT
from tests.integration.labkit import boot, hardkit

pytestmark = pytest.mark.lab
PREFIX = "sxcanary"
REPO_ROOT = Path(__file__).resolve().parents[2]
CRED = "exchange-api-key"
CRED_FILE = f"{CREDSTORE}/{CRED_PREFIX}{CRED}"


def new_marker() -> str:
    return "hkcanary-" + secrets.token_hex(16)


def patterns(*markers: str) -> str:
    """grep -F patterns, one a line: each marker as is, in base64 and in hex."""
    lines = []
    for m in markers:
        lines += [m, base64.b64encode(m.encode()).decode(), m.encode().hex()]
    return "\n".join(lines) + "\n"


class ProcessSampler:
    """Reads every process's command line and environment every 0.1 s while running."""

    def __init__(self, markers: list[str]):
        self.needles = [p.encode() for p in patterns(*markers).split()]
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == os.getpid():
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{part}").read_bytes()
                    except OSError:
                        continue
                    if any(n in data for n in self.needles):
                        self.hits.append(f"/proc/{pid}/{part}: {data[:200]!r}")
            self.samples += 1
            self._stop.wait(0.1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A secrets folder and identity of their own, used by every hardkit this module runs."""
    tmp = tmp_path_factory.mktemp("secrets")
    saved = {k: os.environ.get(k) for k in ("HARDKIT_SECRETS_DIR", "HARDKIT_AGE_IDENTITY")}
    os.environ.update(HARDKIT_SECRETS_DIR=str(tmp / "secrets"), HARDKIT_AGE_IDENTITY=str(tmp / "id.txt"))
    assert hardkit("secrets", "init", "canary").returncode == 0
    yield tmp
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def set_secret(name: str, value: str) -> None:
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "secrets", "set", "canary", name], cwd=REPO_ROOT,
                         input=value, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def canary(store):
    """Boot a fresh target, deploy twice with the marker changing in between, then a dry run with a
    third value pending; keep everything that was printed and sampled."""
    handle = boot(PREFIX, count=1)
    try:
        name = handle.names[0]
        inv_path = handle.variant(store / "inventory.py", secrets_env="canary")
        markers = [new_marker(), new_marker(), new_marker()]
        outputs, sampled, runs = [], [], {}
        set_secret(CRED, markers[0])
        set_secret("exchange-api-secret", "the-other-half")
        with ProcessSampler(markers) as first:
            res = hardkit("deploy", str(inv_path), "--json")  # normal progress on stderr, JSON on stdout
        assert res.returncode == 0, res.stderr[-3000:]
        outputs += [res.stdout, res.stderr]
        runs["first"] = json.loads(res.stdout)["hosts"][name]
        set_secret(CRED, markers[1])
        inv = load(inv_path)
        with ProcessSampler(markers) as second:
            log = io.StringIO()
            result = runner.deploy(inv, inv.hosts, extra_args=["--debug"], stream=log)
        assert result.ok, log.getvalue()[-3000:]
        outputs += [log.getvalue(), json.dumps(result.raw)]
        runs["changed"] = result.hosts[name]
        before = handle.ssh(name, f"stat -c %i:%Y {CRED_FILE}").stdout
        res = hardkit("deploy", str(inv_path), "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        outputs += [res.stdout, res.stderr]
        runs["again"] = json.loads(res.stdout)["hosts"][name]
        runs["inode_before_after"] = (before, handle.ssh(name, f"stat -c %i:%Y {CRED_FILE}").stdout)
        set_secret(CRED, markers[2])
        log = io.StringIO()
        dry = runner.deploy(inv, inv.hosts, dry=True, extra_args=["--diff"], stream=log)
        outputs += [log.getvalue(), json.dumps(dry.raw)]
        runs["dry"] = dry.hosts[name]
        yield {"lab": handle, "name": name, "markers": markers, "outputs": outputs, "runs": runs,
               "samplers": [first, second], "inventory": inv_path}
    finally:
        handle.down()


def host_search(lab, name: str, pattern_text: str) -> tuple[list[str], int]:
    """(files holding any pattern, journal entries holding any), searched on the target as root with the
    patterns on grep's stdin."""
    files = lab.ssh(name, "set --; for d in /*; do case $d in /proc|/sys) ;; *) set -- \"$@\" \"$d\";; esac; done; "
                          "grep -rlsF --devices=skip -f - \"$@\"; true", stdin=pattern_text, timeout=600)
    journal = lab.ssh(name, "exec 3<&0; journalctl --no-pager -o export </dev/null | grep -caF -f /dev/fd/3; true",
                      stdin=pattern_text, timeout=300)
    return files.stdout.split(), int(journal.stdout.strip() or 0)


def controller_search(pattern_text: str, folders: list[Path]) -> list[str]:
    res = subprocess.run(["grep", "-rlsF", "--devices=skip", "-f", "-", *map(str, folders)],
                         input=pattern_text, capture_output=True, text=True, timeout=600)
    return res.stdout.split()


def controller_folders() -> list[Path]:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return [p for p in (REPO_ROOT, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), xdg and Path(xdg))
            if p and p.is_dir()]


def test_the_host_holds_the_latest_deployed_value(canary):
    lab, name, markers = canary["lab"], canary["name"], canary["markers"]
    got = lab.ssh(name, f"systemd-creds decrypt --name={CRED} {CRED_FILE} - | sha256sum").stdout.split()[0]
    assert got == hashlib.sha256(markers[1].encode()).hexdigest(), "the dry run must not have sent the third value"
    mode = lab.ssh(name, f"stat -c '%a %U' {CRED_FILE} {CREDSTORE} /var/lib/hardkit/credentials.salt "
                         "/var/lib/hardkit/credentials.digests").stdout.split("\n")
    assert [m for m in mode if m] == ["600 root", "700 root", "600 root", "600 root"], mode


def test_sent_once_resent_on_change_never_by_a_dry_run(canary):
    runs = canary["runs"]
    assert runs["first"]["credentials"] == {"sent": ["exchange-api-key", "exchange-api-secret"], "removed": []}
    assert runs["changed"].credentials.sent == ["exchange-api-key"], runs
    assert runs["again"]["credentials"] == {"sent": [], "removed": []} and runs["again"]["changed"] == []
    before, after = runs["inode_before_after"]
    assert before and before == after, "an unchanged credential must not be rewritten on the host"
    assert runs["dry"].credentials.sent == ["exchange-api-key"]


def test_the_marker_is_in_no_output(canary):
    needles = patterns(*canary["markers"]).split()
    for text in canary["outputs"]:
        assert text and not [n for n in needles if n in text]
    # The outputs are real: the debug run printed pyinfra's debug lines, the runs their summaries.
    assert any("[pyinfra.api.operation] Adding operation" in text for text in canary["outputs"])
    assert sum("credentials: sent exchange-api-key" in text for text in canary["outputs"]) == 1


def test_the_marker_is_in_no_process_table_sample(canary):
    for sampler in canary["samplers"]:
        assert sampler.samples > 10 and sampler.hits == [], sampler.hits


def test_the_marker_is_nowhere_on_the_host(canary):
    lab, name = canary["lab"], canary["name"]
    control = new_marker()
    lab.ssh(name, "cat > /var/tmp/sx-control; logger -t sx-control < /var/tmp/sx-control", stdin=control)
    files, journal = host_search(lab, name, patterns(control))
    # The search works: it finds the file, the journal entry, and the journal's file on disk too.
    assert "/var/tmp/sx-control" in files and journal >= 1, (files, journal)
    assert [f for f in files if f != "/var/tmp/sx-control" and "/log/journal/" not in f] == [], files
    files, journal = host_search(lab, name, patterns(*canary["markers"]))
    # The one place the value may be in clear: the running unit's own credential mount, which systemd
    # fills from the ciphertext at start (LoadCredentialEncrypted=): memory only (never disk or swap),
    # readable by the bot's user alone.
    loaded = f"/run/credentials/{BOT_UNIT}"
    assert [f for f in files if not f.startswith(loaded + "/")] == [] and journal == 0, (files, journal)
    mount = lab.ssh(name, f"findmnt -no FSTYPE {loaded}; stat -c '%U %a' {loaded}/{CRED}").stdout.split()
    assert mount[0] in ("ramfs", "tmpfs") and mount[1:] == [BOT_USER, "400"], mount


def test_the_marker_is_nowhere_on_the_controller(canary, tmp_path):
    control = new_marker()
    (tmp_path / "control").write_text(control)
    assert controller_search(patterns(control), controller_folders()) == [str(tmp_path / "control")]
    assert controller_search(patterns(*canary["markers"]), controller_folders()) == []


def test_the_process_sampler_sees_a_marker_in_a_target_process(canary):
    control = new_marker()
    with ProcessSampler([control]) as sampler:  # the marker reaches the target's `sh -c` only through stdin
        canary["lab"].ssh(canary["name"], 'read m; sh -c "sleep 2; : $m"', stdin=control + "\n")
    assert sampler.hits, "the sampler must see the target's processes, or its silence proves nothing"


def test_delivery_reads_a_command_to_its_last_line(canary):
    """sshd reports a command's exit as soon as its process ends, maybe before the last output is read:
    the delivery's state report must not be cut there (a cut report re-sent unchanged credentials)."""
    from deploy import connect, credentials

    host = load(canary["inventory"]).hosts[0]
    session = credentials._Session(host, connect.resolve(host))
    try:
        assert session.run("(sleep 2; echo late) & echo early") == "early\nlate\n"
        credentials._parse_state(session.run(credentials._read_state(create_salt=False)), host.name)
    finally:
        session.close()


def test_wrong_identity_is_refused_before_any_connection(canary, tmp_path):
    lab, name = canary["lab"], canary["name"]
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    other.chmod(0o600)
    count = "journalctl -u ssh --no-pager | grep -c 'Accepted publickey'"
    before = int(lab.ssh(name, count).stdout)
    res = hardkit("deploy", str(canary["inventory"]), "--identity", str(other))
    after = int(lab.ssh(name, count).stdout)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "not a recipient" in res.stderr and "Traceback" not in res.stderr
    assert after == before + 1, "only the counting login itself may have been accepted"


def test_without_secrets_env_the_delivered_credentials_go_and_nothing_else(canary, tmp_path):
    """Last (it changes the host): the lab's own inventory has no secrets_env, as in `make demo`."""
    lab, name = canary["lab"], canary["name"]
    host_made = f"{CREDSTORE}/{CRED_PREFIX}audit-key"  # the bot role made it: never hardkit-delivered
    made = lab.ssh(name, f"stat -c %i:%Y {host_made}").stdout
    assert made.strip(), "the bot role made no audit key"
    env = {**os.environ, "HARDKIT_AGE_IDENTITY": str(tmp_path / "no-identity-needed.txt")}
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(lab.inventory_path), "--json"],
                         cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["hosts"][name]["credentials"] == {
        "sent": [], "removed": ["exchange-api-key", "exchange-api-secret"]}
    assert lab.ssh(name, f"ls {CREDSTORE}").stdout.split() == [f"{CRED_PREFIX}audit-key"]
    assert lab.ssh(name, f"stat -c %i:%Y {host_made}").stdout == made, "the host-made audit key was touched"
