"""The cached Debian 12 rootfs every lab target starts from.

Built once with mmdebstrap from the Debian mirror this machine reaches, and rebuilt only
when its recipe (this module's package list and `recipe/customize.sh`) changes: the cache
key is a digest of the recipe. Both tiers use it: nspawn mounts an overlay on it, the vm
tier turns it into a disk image (see `sandbox.vm`).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

from sandbox import host
from sandbox.errors import LabError
from sandbox.paths import images_dir

SUITE = "bookworm"

#: What a provider's minimal Debian 12 cloud image has. Deliberately absent: nftables, fail2ban,
#: sudo, unattended-upgrades, auditd, chrony — the deploy installs what it needs.
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "openssh-server", "python3",
    "iproute2", "iputils-ping", "procps", "ca-certificates", "netbase", "less", "zstd",
    "apt-utils", "cron", "linux-image-amd64", "initramfs-tools", "e2fsprogs",
]

CUSTOMIZE = Path(__file__).parent / "recipe" / "customize.sh"

#: The host's apt configuration that points at the reachable mirror (a dated snapshot,
#: hence Check-Valid-Until off). Copied into the rootfs so apt works inside targets.
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
APT_OPTIONS = ['Acquire::Check-Valid-Until "false"', 'Acquire::Check-Date "false"']


def recipe_digest() -> str:
    h = hashlib.sha256()
    h.update(SUITE.encode())
    h.update("\n".join(PACKAGES).encode())
    h.update(CUSTOMIZE.read_bytes())
    h.update("\n".join(APT_OPTIONS).encode())
    if HOST_SOURCES.exists():
        h.update(HOST_SOURCES.read_bytes())
    return h.hexdigest()[:16]


def image_dir() -> Path:
    return images_dir() / recipe_digest()


def rootfs() -> Path:
    return image_dir() / "rootfs"


def is_built() -> bool:
    return (image_dir() / "READY").exists()


def require_built() -> Path:
    if not is_built():
        raise LabError("the lab image is not built yet: run `hardkit sandbox image` first")
    return rootfs()


def _mirror_args() -> list[str]:
    if HOST_SOURCES.exists():
        return [str(HOST_SOURCES)]
    return [f"deb {FALLBACK_MIRROR} {SUITE} main", f"deb {FALLBACK_MIRROR} {SUITE}-updates main",
            f"deb http://deb.debian.org/debian-security {SUITE}-security main"]


def _apt_conf_hook() -> str:
    conf = "\n".join(f"{opt};" for opt in APT_OPTIONS)
    return f"printf '%s\\n' '{conf}' > \"$1/etc/apt/apt.conf.d/99hardkit-lab-mirror\""


def build(force: bool = False, log=print) -> Path:
    """Build the image if its recipe changed (or `force`); return the rootfs path."""
    host.require_root("hardkit sandbox image")
    host.require_tools(["mmdebstrap"], "hardkit sandbox image")
    target = image_dir()
    if is_built() and not force:
        log(f"image up to date: {target} (recipe {recipe_digest()})")
        return rootfs()
    if target.exists():
        shutil.rmtree(target)
    staging = target.with_name(target.name + ".building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    log(f"building Debian 12 lab image (recipe {recipe_digest()}); this takes about two minutes")
    started = time.monotonic()
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--include=" + ",".join(PACKAGES)]
    cmd += [f"--aptopt={opt}" for opt in APT_OPTIONS]
    cmd += [f"--customize-hook={_apt_conf_hook()}",
            f"--customize-hook=sh {CUSTOMIZE} \"$1\"",
            SUITE, str(staging / "rootfs"), *_mirror_args()]
    proc = host.run(cmd, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-15:]
        shutil.rmtree(staging, ignore_errors=True)
        raise LabError("mmdebstrap failed:\n" + "\n".join(tail))
    staging.rename(target)
    (target / "READY").write_text(f"{time.time()}\n")
    log(f"image built in {time.monotonic() - started:.0f}s: {target}")
    _prune_old(keep=target)
    return rootfs()


def _prune_old(keep: Path) -> None:
    """Old recipes' images are useless once a new one is built; targets using them keep their mounts."""
    for old in images_dir().iterdir():
        if old != keep and not old.name.endswith(".building") and not _in_use(old):
            shutil.rmtree(old, ignore_errors=True)


def _in_use(image: Path) -> bool:
    mounts = Path("/proc/self/mounts").read_text()
    return str(image) in mounts


def main() -> None:  # pragma: no cover - convenience for `python -m sandbox.image`
    try:
        build(force="--force" in sys.argv)
    except LabError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":  # pragma: no cover
    main()
