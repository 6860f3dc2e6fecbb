"""Interrupted deploys converge: the controller killed (SIGKILL) at operations chosen at random,
and in the middle of the SSH and the firewall changes, or the host's network link dropped during
one, leaves the host reachable, and the next deploy converges with no manual step.

One nspawn target. Its fresh deploy is interrupted first, at seeded random operations, each run
further in than the last (so each interrupts real work), one of them by dropping the link; then
the guarded files are edited by hand before each targeted interrupted run, so that run really
applies an SSH or firewall change when it is killed. The guard's revert is set to its shortest
(15 s) to keep the wait small.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from deploy import connect
from roles.access_data import ADMIN_USER
from roles.firewall import NFT_CONF
from roles.guard import FAULT_ENV, GUARD_BIN
from roles.ssh import SSHD_CONFIG
from tests.integration.labkit import REPO_ROOT, boot

pytestmark = pytest.mark.lab
PREFIX = "flint"
REVERT = 15
#: Interrupted runs of the fresh deploy, and the seed that picks their operations: fixed for CI so
#: a failure replays; HARDKIT_KILL_POINTS / HARDKIT_KILL_SEED run more or others (a stress run).
KILL_POINTS = int(os.environ.get("HARDKIT_KILL_POINTS", "3"))
KILL_SEED = int(os.environ.get("HARDKIT_KILL_SEED", "11"))
#: Kill points are drawn among the first operations of a fresh deploy (it runs more).
FRESH_OPS = 90
#: Seconds a deploy may take to reach the operation a test interrupts it at (a fresh deploy on a CI
#: machine whose cores other lab modules and the vm tier's software CPU share).
START_WAIT = 1800


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The booted target, not deployed yet."""
    handle = boot(PREFIX)
    handle.inventory_path = handle.variant(tmp_path_factory.mktemp("inv") / "inventory.py",
                                           guard_revert_seconds=REVERT)
    yield handle
    handle.down()


@pytest.fixture(scope="module")
def lab(fresh):
    """The target deployed (a no-op when the random-kill test ran first and converged it)."""
    first = fresh.deploy()
    assert first.ok, {n: (h.failed, h.error) for n, h in first.hosts.items()}
    return fresh


def deploy_until(lab, marker: str | int, delay: float, during=None, wait: float = 300, env=None,
                 until=None) -> str:
    """Start `hardkit deploy -v`; once pyinfra starts the operation named by `marker` (or, for a
    number, its marker-th operation), wait `delay` seconds (and then until `until()` is true, if
    given), run `during` (if given) else SIGKILL the whole controller; return what it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "deploy", str(lab.inventory_path), "-v"],
                            cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    seen, hit, started, reached = [], threading.Event(), [0], threading.Event()

    def read():
        for line in proc.stderr:
            seen.append(line)
            if "Starting operation:" in line:
                started[0] += 1
                if started[0] == marker if isinstance(marker, int) else marker in line:
                    reached.set()
                    hit.set()
        hit.set()  # the controller closed its output (it may not have exited yet)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not hit.wait(START_WAIT):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the deploy had not started {marker!r} after {START_WAIT} s:\n" + "".join(seen[-40:]))
    if not reached.is_set():
        raise AssertionError(f"the deploy ended (exit {proc.wait()}) before {marker!r}:\n" + "".join(seen[-40:]))
    time.sleep(delay)
    deadline = time.monotonic() + 60
    while until is not None and not until() and time.monotonic() < deadline:
        time.sleep(0.3)
    if during is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended by itself (the confirming login failed): the host is left the same way
    else:
        during()
    try:
        proc.wait(timeout=wait)  # a controller still hanging then is killed: the host must not care
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(5)
    return "".join(seen)


def admin_reachable(lab, within: float, bootstrap_ok: bool = False) -> connect.Login:
    """A fresh login as the admin (with sudo) within `within` seconds, or the test fails; with
    `bootstrap_ok` (before a deploy has created the admin) the bootstrap login will do."""
    host = lab.inventory.hosts[0]
    deadline, why = time.monotonic() + within, ""
    while time.monotonic() < deadline:
        try:
            login = connect.resolve(host)
            if login.user == host.get(ADMIN_USER) or bootstrap_ok:
                return login
            why = f"logged in as {login.user}, not the admin"
        except connect.LoginError as e:
            why = str(e)
        time.sleep(2)
    raise AssertionError(f"the admin cannot log in any more: {why}")


def converges(lab, edited: str | None = None) -> None:
    """The next deploy converges, and stays converged once any revert the killed run armed has had
    its time: nothing pending on the host, the hand edit gone, a further deploy changes nothing."""
    again = lab.deploy()
    assert again.ok, {n: (h.failed, h.error) for n, h in again.hosts.items()}
    time.sleep(REVERT + 5)
    name = lab.names[0]
    assert lab.ssh(name, f"{GUARD_BIN} pending").stdout.strip() == ""
    if edited:
        assert "edited by hand" not in lab.ssh(name, f"cat {edited}").stdout
    settled = lab.deploy()
    assert settled.ok and settled.changed_ops == 0, {n: h.changed for n, h in settled.hosts.items()}


def test_fresh_deploy_interrupted_at_random_operations_converges(fresh):
    """The fresh deploy, run again and again, each run interrupted further in (at the n-th
    operation pyinfra starts, one n drawn with KILL_SEED in each of KILL_POINTS equal stretches): the controller SIGKILLed, or for the second
    run the link dropped. After each, a login works (the admin's once it has worked once); then
    one deploy converges and a further one changes nothing."""
    rng = random.Random(KILL_SEED)
    bounds = [2 + (FRESH_OPS - 2) * i // KILL_POINTS for i in range(KILL_POINTS + 1)]
    points = [rng.randrange(lo, hi) for lo, hi in zip(bounds, bounds[1:])]  # one in each stretch: spread out
    admin_seen = False
    for i, nth in enumerate(points):
        how = "link dropped" if i == 1 else "SIGKILL"
        out = deploy_until(fresh, nth, rng.uniform(0, 1.5), during=link_dropper(fresh) if i == 1 else None)
        operation = [line for line in out.splitlines() if "Starting operation:" in line][nth - 1]
        print(f"seed {KILL_SEED}: {how} at operation {nth}: {operation.split('Starting operation:')[1].strip()}")
        login = admin_reachable(fresh, within=REVERT + 60, bootstrap_ok=not admin_seen)
        admin_seen = admin_seen or login.user == fresh.inventory.hosts[0].get(ADMIN_USER)
    converges(fresh)


@pytest.mark.parametrize("marker,edited,delay", [
    ("sshd configuration", SSHD_CONFIG, 0.3),
    ("sshd configuration", SSHD_CONFIG, 1.5),
    ("nftables ruleset", NFT_CONF, 1.0),
], ids=["ssh-early", "ssh-late", "firewall"])
def test_controller_killed_during_a_guarded_change(lab, marker, edited, delay):
    name = lab.names[0]
    assert lab.ssh(name, f"echo '# edited by hand' >> {edited}").returncode == 0
    out = deploy_until(lab, marker, delay)
    assert marker in out
    admin_reachable(lab, within=REVERT + 60)
    converges(lab, edited)


def test_controller_killed_after_apply_before_confirm(lab):
    """The narrowest window: the change is live on the host and waits for its confirming login
    (made to fail, so the controller keeps retrying) when the controller dies. The next deploy
    must confirm it, or the host's timer would later put the hand-edited file back."""
    name = lab.names[0]
    assert lab.ssh(name, f"echo '# edited by hand' >> {SSHD_CONFIG}").returncode == 0
    pending = lambda: "ssh" in lab.ssh(name, f"{GUARD_BIN} pending").stdout.split()  # noqa: E731
    deploy_until(lab, "sshd configuration", 0, env={FAULT_ENV: "confirm-fails:ssh"}, until=pending)
    admin_reachable(lab, within=REVERT + 60)
    converges(lab, SSHD_CONFIG)


def link_dropper(lab):
    """A `during` for deploy_until: the host's link down for longer than the guard waits for its
    confirming login, then up again."""
    netns = lab.host_data(lab.names[0])["lab"]["netns"]

    def drop_link():
        subprocess.run(["ip", "-n", netns, "link", "set", "tap0", "down"], check=True)
        time.sleep(REVERT + 10)
        subprocess.run(["ip", "-n", netns, "link", "set", "tap0", "up"], check=True)
        # A link going down takes its routes with it; a provider's network would bring them back.
        subprocess.run(["ip", "-n", netns, "route", "replace", "default", "via", "10.0.2.2", "dev", "tap0"], check=True)

    return drop_link


def test_link_dropped_during_the_firewall_change(lab):
    name = lab.names[0]
    assert lab.ssh(name, f"echo '# edited by hand' >> {NFT_CONF}").returncode == 0
    deploy_until(lab, "nftables ruleset", 0.5, during=link_dropper(lab))
    admin_reachable(lab, within=REVERT + 60)
    converges(lab, NFT_CONF)
