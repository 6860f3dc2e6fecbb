"""Baseline: what every later role relies on — a fresh package index and the kit's own marker.

The marker (`/etc/hardkit/release`) records which hardkit version last converged the host,
so `hardkit status`/`drift` can tell a host that was never deployed from one that drifted.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.facts.server import Command, Hostname
from pyinfra.operations import apt, files

from roles.data import DataKey, is_count
from roles.ops import install_file

#: The kit's version written to the host marker.
HARDKIT_RELEASE = "0.1.0"
#: The marker file's path on the host.
RELEASE_FILE = "/etc/hardkit/release"

APT_CACHE_SECONDS = DataKey(
    "apt_cache_seconds", 3600,
    "Skip `apt-get update` when the package index is younger than this (keeps redeploys fast and idempotent).",
    lambda v: None if isinstance(v, int) and v >= 0 else f"must be a non-negative integer, not {v!r}")

APT_LOCK_WAIT_SECONDS = DataKey(
    "apt_lock_wait_seconds", 600,
    "How long every apt-get on the host (the deploy's and anyone's) waits for another holder of dpkg's lock "
    "before it fails. A fresh VPS often runs unattended-upgrades or apt's daily job right after its first boot "
    "(a persistent timer that missed its time); without a wait the deploy's next package operation fails with "
    "'Could not get lock /var/lib/dpkg/lock-frontend' (seen on the vm tier). apt's own default is not to wait.",
    is_count)
#: The apt configuration that makes apt-get wait (read by every apt-get, so set before the first).
APT_LOCK_CONF = "/etc/apt/apt.conf.d/10hardkit-lock-wait"


def apt_lock_conf(seconds: int) -> str:
    return (f"// Managed by hardkit (roles/baseline.py): wait for another apt or dpkg (e.g. unattended-upgrades\n"
            f"// at first boot) instead of failing at once.\nDPkg::Lock::Timeout \"{seconds}\";\n")


#: Packages every host gets; later roles install their own.
BASE_PACKAGES = ["ca-certificates"]

KEYS = [APT_CACHE_SECONDS, APT_LOCK_WAIT_SECONDS]


@deploy("Baseline")
def baseline():
    from pyinfra import host

    install_file(name="apt waits for another apt or dpkg instead of failing",
                 content=apt_lock_conf(APT_LOCK_WAIT_SECONDS.value(host.data)), dest=APT_LOCK_CONF,
                 mode="0644", validate="apt-config -c {path} dump >/dev/null")
    apt.update(name="Refresh the package index when stale", cache_time=APT_CACHE_SECONDS.value(host.data))
    apt.packages(name="Install base packages", packages=BASE_PACKAGES)
    if not host.get_fact(Command, command="getent hosts \"$(hostname)\" >/dev/null && echo yes || echo no") == "yes":
        files.line(name="The host's own name resolves (sudo and logging need it)", path="/etc/hosts",
                   line=r"^127\.0\.1\.1\s.*", replace=f"127.0.1.1 {host.get_fact(Hostname)}")
    files.directory(name="hardkit state folder", path="/etc/hardkit", user="root", group="root", mode="755")
    install_file(name="hardkit release marker", content=f"HARDKIT_RELEASE={HARDKIT_RELEASE}\n", dest=RELEASE_FILE,
                 mode="0644")
apply = baseline
