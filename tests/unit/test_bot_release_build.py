"""The bot's release is built once per controller, however many hosts or runs ask for it at once.

pyinfra prepares every host in its own greenlet, and each host's bot role asks for the release: a
fresh cache once made 12 hosts start 12 builds in the same source tree, which removed each other's
files ("could not create build/bdist.../cli.py") and failed the whole deploy.
"""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from roles import bot_release

REPO = Path(__file__).resolve().parents[2]


def _source_copy(tmp_path) -> Path:
    """A copy of the bot's sources without build leftovers, to build from or break."""
    src = tmp_path / "bot"
    shutil.copytree(bot_release.BOT_SRC, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist"))
    return src


@pytest.fixture
def counted_builds(tmp_path, monkeypatch):
    """A fresh cache and a slow stand-in for the wheelhouse build that counts how often it runs."""
    calls = []

    def slow_build(folder: Path):
        calls.append(folder)
        time.sleep(0.5)  # long enough for every other caller to arrive while it builds
        (folder / "release.lock").write_text("stand-in\n")

    monkeypatch.setattr(bot_release, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(bot_release, "build_wheelhouse", slow_build)
    memo = getattr(bot_release, "_current", bot_release.current)  # the memoised builder
    memo.cache_clear()
    yield calls
    memo.cache_clear()


def test_concurrent_callers_in_one_process_share_one_build(counted_builds):
    got, errors = [], []

    def ask():
        try:
            got.append(bot_release.current())
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(counted_builds) == 1, f"{len(counted_builds)} builds for 8 concurrent callers"
    assert len({r.tarball for r in got}) == 1 and got[0].tarball.is_file()


def test_a_second_run_waits_for_the_first_runs_build_and_does_not_build_again(counted_builds, tmp_path):
    """Another hardkit process holding the cache's build lock: this run waits, then finds the release."""
    cache = bot_release.CACHE
    cache.mkdir(parents=True)
    tarball = cache / f"{bot_release.name()}.tar"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(cache / '.build.lock')!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(1.5)\n"
         f"open({str(tarball)!r}, 'wb').write(b'built by the other run')\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        release = bot_release.current()
    finally:
        holder.wait(timeout=30)
    assert counted_builds == [], "built although another run had built the release meanwhile"
    assert release.tarball.read_bytes() == b"built by the other run"


def test_the_wheel_is_built_outside_the_source_tree(tmp_path, monkeypatch):
    """Two builds of one checkout (two runs with different caches) must not share setuptools' build/."""
    src = _source_copy(tmp_path)
    monkeypatch.setattr(bot_release, "BOT_SRC", src)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    seen = []
    real_run = bot_release._run

    def wheel_only(cmd, what):
        seen.append(what)
        if "wheel" in cmd:
            real_run(cmd, what)
        else:
            raise bot_release.ReleaseError("stop after the wheel")  # no download from PyPI in a unit test

    monkeypatch.setattr(bot_release, "_run", wheel_only)
    house = tmp_path / "house"
    house.mkdir()
    with pytest.raises(bot_release.ReleaseError, match="stop after the wheel"):
        bot_release.build_wheelhouse(house)
    assert len(list(house.glob("hardkit_bot-*.whl"))) == 1, seen
    after = sorted(p.relative_to(src) for p in src.rglob("*"))
    assert after == before, f"the build wrote into the source tree: {sorted(set(after) - set(before))[:5]}"


def _deploy(tmp_path, bot_src: Path) -> subprocess.CompletedProcess:
    """`hardkit deploy` of one unreachable host (port 9) whose bot is built from `bot_src`."""
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inv = tmp_path / "inv.py"
    inv.write_text(f'hosts = [("h1", {{"ssh_hostname": "127.0.0.1", "ssh_port": 9, "ssh_key": "{key}", '
                   f'"admin_user": "ops", "admin_keys": ["{key}.pub"], "ssh_allow_from": ["10.0.2.2/32"]}})]\n')
    env = dict(os.environ, HARDKIT_BOT_SOURCE=str(bot_src), HARDKIT_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(inv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("breakage", ["backend", "pyproject"])
def test_a_release_that_cannot_be_built_stops_the_deploy_before_any_host(tmp_path, breakage):
    """One clear line, exit 1, and no login tried (the host at port 9 would have said unreachable)."""
    src = _source_copy(tmp_path)
    pyproject = src / "pyproject.toml"
    if breakage == "backend":
        pyproject.write_text(pyproject.read_text().replace('build-backend = "setuptools.build_meta"',
                                                           'build-backend = "no_such_backend"'))
    else:
        pyproject.write_text("[project\n")
    res = _deploy(tmp_path, src)
    assert res.returncode == 1, res.stderr
    # pip's own output (quoted after the line) may hold its build backend's traceback; hardkit's may not
    assert res.stderr.startswith("error: the bot's release could not be built, no host was touched:"), res.stderr
    assert "deploy/cli.py" not in res.stderr and "deploy/runner.py" not in res.stderr, res.stderr
    assert "h1" not in res.stderr and "unreachable" not in res.stderr.lower(), res.stderr
