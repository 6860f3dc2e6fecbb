"""The bot's release: a wheelhouse built on the controller, so the VPS installs offline.

A release is named `<version>-<digest>`, the digest covering the bot's sources and its hashed
lock (`bot/requirements.lock`): the same sources give the same name on every controller, so a
redeploy of an unchanged bot finds the release already installed and changes nothing, and any
change to the code or the lock makes a new release.

The wheelhouse holds the bot's own wheel and every wheel of the lock, downloaded by pip with
`--require-hashes` for the VPS's platform (CPython 3.11, manylinux x86_64: Debian 12's python3),
and `release.lock`, the lock plus the bot wheel's own hash, which the host installs with
`pip --no-index --require-hashes`: nothing on the VPS comes from anywhere but this tarball, and
nothing in it is unhashed. Wheelhouses are cached per release under ~/.cache/hardkit/releases.

One build at a time: pyinfra prepares its hosts in concurrent greenlets and several `hardkit` runs
may share a controller and its cache, so a build holds a lock in the process and a lock file in the
cache, and the wheel is built from a private copy of the sources (setuptools builds in the source
tree, where two builds of one checkout removed each other's files).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: The bot's sources: this repository's bot/, or another checkout of it (HARDKIT_BOT_SOURCE), e.g. to
#: try a branch of the bot on a staging host.
BOT_SRC = Path(os.environ.get("HARDKIT_BOT_SOURCE") or Path(__file__).resolve().parent.parent / "bot")
CACHE = Path(os.environ.get("HARDKIT_CACHE", Path.home() / ".cache" / "hardkit")) / "releases"
#: The VPS's interpreter and platform (Debian 12: CPython 3.11 on x86_64, glibc 2.36).
TARGET_PYTHON = "3.11"
#: pip does not widen an explicit --platform to older manylinux tags: name each one glibc 2.36 runs.
TARGET_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
TARGET_MACHINE = "x86_64"
#: What the release digest covers: the package's sources, its metadata and the lock.
_SOURCE_SUFFIXES = (".py", ".toml", ".lock", ".md", ".typed", ".cfg")
_SKIP_DIRS = {"__pycache__", "build", "dist", ".pytest_cache"}
#: How long a run waits for another run's build of a release before it gives up (a build from an empty
#: pip cache downloads every locked wheel: about a minute here).
BUILD_WAIT_S = 900


class ReleaseError(Exception):
    """The wheelhouse could not be built (said as a sentence; pip's output follows)."""


@dataclass(frozen=True)
class Release:
    name: str      # <version>-<digest>, the folder under /opt/hardkit-bot/releases
    tarball: Path  # the wheelhouse to upload


def version() -> str:
    try:
        return tomllib.loads((BOT_SRC / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise ReleaseError(f"{BOT_SRC / 'pyproject.toml'} gives no project version ({type(e).__name__}: {e})") from None


def source_files() -> list[Path]:
    files = []
    for root, dirs, names in os.walk(BOT_SRC):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        files += [Path(root) / n for n in sorted(names) if n.endswith(_SOURCE_SUFFIXES)]
    return files


def digest() -> str:
    h = hashlib.sha256()
    for f in source_files():
        h.update(str(f.relative_to(BOT_SRC)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def name() -> str:
    return f"{version()}-{digest()}"


def _run(cmd: list[str], what: str) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ReleaseError(f"{what} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def build_wheelhouse(folder: Path) -> None:
    """Fill `folder` with the bot wheel, the lock's wheels and release.lock."""
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(prefix="hardkit-bot-src-") as tmp:
        src = Path(tmp) / "bot"
        shutil.copytree(BOT_SRC, src, ignore=lambda _dir, names: [
            n for n in names if n in _SKIP_DIRS or n.endswith(".egg-info")])
        _run(pip + ["wheel", "-q", "--no-deps", "-w", str(folder), str(src)], "building the bot's wheel")
    _run(pip + ["download", "-q", "--require-hashes", "--no-deps", "--only-binary=:all:",
                "--python-version", TARGET_PYTHON, "--implementation", "cp", *[a for p in TARGET_PLATFORMS for a in ("--platform", p)],
                "-d", str(folder), "-r", str(BOT_SRC / "requirements.lock")],
         "downloading the locked wheels for the VPS")
    wheels = list(folder.glob("hardkit_bot-*.whl"))
    if len(wheels) != 1:
        raise ReleaseError(f"expected one hardkit_bot wheel in {folder}, found {len(wheels)}")
    wheel_hash = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    (folder / "release.lock").write_text(
        (BOT_SRC / "requirements.lock").read_text() + f"\nhardkit-bot=={version()} \\\n    --hash=sha256:{wheel_hash}\n")


_BUILDING = threading.Lock()  # pyinfra's gevent makes this a greenlet lock: its hosts wait for one build


def current() -> Release:
    """This controller's release of the bot, built (once per process) or taken from the cache."""
    with _BUILDING:
        return _current()


@lru_cache(maxsize=1)
def _current() -> Release:
    rel = name()
    tarball = CACHE / f"{rel}.tar"
    if not tarball.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with _cache_lock():
            if not tarball.is_file():  # another run may have built it while this one waited
                _build(tarball)
    return Release(rel, tarball)


def _build(tarball: Path) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        house = Path(tmp) / "wheelhouse"
        house.mkdir()
        build_wheelhouse(house)
        partial = Path(tmp) / "wheelhouse.tar"
        with tarfile.open(partial, "w") as tar:
            for f in sorted(house.iterdir()):
                tar.add(f, arcname=f.name)
        partial.replace(tarball)


@contextmanager
def _cache_lock():
    """The cache's build lock, shared by every hardkit run on this controller. Polled (not a blocking
    flock) so that a gevent process keeps serving its other greenlets while it waits."""
    fd = os.open(CACHE / ".build.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + BUILD_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ReleaseError(f"another hardkit run has been building the bot's release for over "
                                       f"{BUILD_WAIT_S} s (lock {CACHE / '.build.lock'})") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
