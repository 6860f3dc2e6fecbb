"""Interrupted deploys converge: the controller killed (SIGKILL) in the middle of the SSH and the
firewall changes, or the host's network link dropped during one, leaves the host reachable by the
admin, and the next deploy converges with no manual step.

One nspawn target. The guarded files are edited by hand before each interrupted run, so that run
really applies an SSH or firewall change when it is killed; the guard's revert is set to its
shortest (15 s) to keep the wait small.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    handle = boot(PREFIX)
    handle.inventory_path = handle.variant(tmp_path_factory.mktemp("inv") / "inventory.py",
                                           guard_revert_seconds=REVERT)
    first = handle.deploy()
    assert first.ok, {n: (h.failed, h.error) for n, h in first.hosts.items()}
    yield handle
    handle.down()


def deploy_until(lab, marker: str, delay: float, during=None, wait: float = 300, env=None, until=None) -> str:
    """Start `hardkit deploy -v`; once pyinfra starts the operation named by `marker`, wait `delay`
    seconds (and then until `until()` is true, if given), run `during` (if given) else SIGKILL the
    whole controller; return what it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "deploy", str(lab.inventory_path), "-v"],
                            cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    seen, hit = [], threading.Event()

    def read():
        for line in proc.stderr:
            seen.append(line)
            if "Starting operation:" in line and marker in line:
                hit.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert hit.wait(600), "".join(seen[-40:])
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


def admin_reachable(lab, within: float) -> connect.Login:
    """A fresh login as the admin (with sudo) within `within` seconds, or the test fails."""
    host = lab.inventory.hosts[0]
    deadline, why = time.monotonic() + within, ""
    while time.monotonic() < deadline:
        try:
            login = connect.resolve(host)
            if login.user == host.get(ADMIN_USER):
                return login
            why = f"logged in as {login.user}, not the admin"
        except connect.LoginError as e:
            why = str(e)
        time.sleep(2)
    raise AssertionError(f"the admin cannot log in any more: {why}")


def converges(lab, edited: str) -> None:
    """The next deploy converges, and stays converged once any revert the killed run armed has had
    its time: nothing pending on the host, the hand edit gone, a further deploy changes nothing."""
    again = lab.deploy()
    assert again.ok, {n: (h.failed, h.error) for n, h in again.hosts.items()}
    time.sleep(REVERT + 5)
    name = lab.names[0]
    assert lab.ssh(name, f"{GUARD_BIN} pending").stdout.strip() == ""
    assert "edited by hand" not in lab.ssh(name, f"cat {edited}").stdout
    settled = lab.deploy()
    assert settled.ok and settled.changed_ops == 0, {n: h.changed for n, h in settled.hosts.items()}


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


def test_link_dropped_during_the_firewall_change(lab):
    name = lab.names[0]
    netns = lab.host_data(name)["lab"]["netns"]
    assert lab.ssh(name, f"echo '# edited by hand' >> {NFT_CONF}").returncode == 0

    def drop_link():
        subprocess.run(["ip", "-n", netns, "link", "set", "tap0", "down"], check=True)
        time.sleep(REVERT + 10)  # longer than the guard waits for its confirming login
        subprocess.run(["ip", "-n", netns, "link", "set", "tap0", "up"], check=True)
        # A link going down takes its routes with it; a provider's network would bring them back.
        subprocess.run(["ip", "-n", netns, "route", "replace", "default", "via", "10.0.2.2", "dev", "tap0"], check=True)

    deploy_until(lab, "nftables ruleset", 0.5, during=drop_link)
    admin_reachable(lab, within=REVERT + 60)
    converges(lab, NFT_CONF)
