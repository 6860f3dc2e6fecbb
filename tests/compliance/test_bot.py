"""The trading bot as deployed: its unit and sandbox in force, its release, config, credentials,
control socket and trading state, read from systemd, the file system and the bot itself."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from roles import bot as role
from roles import bot_config
from roles.bot_paths import (BOT_USER, CONFIG_DIR, CONFIG_FILE, CONTROL_SOCKET, CREDSTORE, CURRENT_LINK,
                             DASHBOARD_SOCKET, OPERATORS_GROUP, RUNTIME_DIR, UNIT)
from tests.compliance import os_state

#: `systemctl show` reports some settings in its own words.
_SHOWN = {"SystemCallErrorNumber": {"EPERM": "1"}}
#: Multi-word settings compare as sets (systemd reorders them).
_AS_SET = {"RestrictAddressFamilies"}


#: The controls that apply when the inventory turns the bot off (every other one needs the bot).
WHEN_DISABLED = {"test_a_disabled_bot_does_not_run"}


@pytest.fixture(autouse=True)
def _bot_enabled(request, target):
    enabled = bot_config.BOT_ENABLED.value(target.data)
    if not enabled and request.function.__name__ not in WHEN_DISABLED:
        pytest.skip("bot_enabled is false for this host: no bot to check")
    if enabled and request.function.__name__ in WHEN_DISABLED:
        pytest.skip("bot_enabled is true for this host: the bot's own controls apply")


def _unit(target) -> dict[str, str]:
    return target.fact("bot-unit", lambda t: os_state.units(t, [UNIT])[UNIT])


def _show(target) -> dict[str, str]:
    def read(t):
        names = sorted({k for k, _ in role.SANDBOX} | {"User", "Group", "SupplementaryGroups", "MainPID"})
        out = t.check_output(f"systemctl show {UNIT} " + " ".join(f"-p {n}" for n in names))
        return os_state.key_values(out, "=")
    return target.fact("bot-show", read)


def _status(target) -> dict:
    def read(t):
        res = t.run(f"{role.CLI_LINK} status --json --socket {CONTROL_SOCKET}")
        assert res.rc == 0, f"the bot does not answer on {CONTROL_SOCKET} (rc={res.rc}): {res.stderr.strip()}"
        return json.loads(res.stdout)
    return target.fact("bot-status", read)


@pytest.mark.control("hk-bot-01")
def test_bot_runs_as_its_user(target):
    """The bot's unit is enabled and active, and its process runs as the bot's system user, never root"""
    unit = _unit(target)
    assert unit.get("ActiveState") == "active" and unit.get("UnitFileState") == "enabled", unit
    show = _show(target)
    assert show.get("User") == BOT_USER and show.get("Group") == OPERATORS_GROUP, show
    pid = show.get("MainPID", "0")
    owner = target.check_output(f"ps -o user= -p {shlex.quote(pid)}").strip()
    assert owner == BOT_USER, f"main process {pid} runs as {owner!r}"
    account = next((row for row in os_state.passwd(target) if row[0] == BOT_USER), None)
    assert account and account[6] in ("/usr/sbin/nologin", "/bin/false"), f"{BOT_USER} can log in: {account}"


@pytest.mark.control("hk-bot-02")
def test_bot_sandbox_in_force(target):
    """Every sandbox setting of the bot's unit is in force as systemd reports it"""
    show = _show(target)
    wrong = []
    for key, value in role.SANDBOX:
        if key == "SystemCallFilter":
            continue  # shown expanded: checked below
        want = _SHOWN.get(key, {}).get(value, value)
        have = show.get(key, "")
        same = set(have.split()) == set(want.split()) if key in _AS_SET else have == want
        if not same:
            wrong.append(f"{key}={have!r} (want {want!r})")
    assert not wrong, "; ".join(wrong)
    filt = target.check_output(f"systemctl show {UNIT} -p SystemCallFilter --value").split()
    allowed = {s for s in filt if not s.startswith("~")}
    forbidden = {"mount", "reboot", "kexec_load", "init_module", "ptrace", "setuid", "settimeofday", "swapon"}
    assert allowed and not allowed & forbidden, f"system calls the bot may make include {sorted(allowed & forbidden)}"


@pytest.mark.control("hk-bot-03")
def test_bot_exposure(target):
    """`systemd-analyze security` scores the live unit at or below the allowed exposure"""
    out = target.check_output(f"systemd-analyze security {UNIT} 2>&1")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert found, out[-500:]
    assert float(found.group(1)) <= role.MAX_EXPOSURE, f"exposure {found.group(1)} > {role.MAX_EXPOSURE}"


@pytest.mark.control("hk-bot-04")
def test_bot_credentials_private(target):
    """Credentials are systemd-creds ciphertexts readable by root only; decrypted, only the bot can read them"""
    stats = os_state.stats(target, [CREDSTORE])
    assert stats.get(CREDSTORE) == ("root", "root", 0o700), stats
    names = role.credentials_wanted(target.check_output(f"ls -1 {CREDSTORE}").split())
    assert role.AUDIT_KEY in names, f"no audit key in {CREDSTORE}"
    files = [role.cred_path(n) for n in names]
    for path, (user, group, mode) in os_state.stats(target, files).items():
        assert (user, group, mode & 0o077) == ("root", "root", 0), f"{path}: {user}:{group} {oct(mode)}"
    loaded = f"/run/credentials/{UNIT}"
    listing = target.check_output(f"stat -c '%n|%U|%a' {loaded} {loaded}/*").split()
    for line in listing:
        path, user, mode = line.rsplit("|", 2)
        assert user == BOT_USER and int(mode, 8) & 0o077 == 0, f"{path}: {user} {mode}"
    assert {line.rsplit("|", 2)[0].rsplit("/", 1)[1] for line in listing[1:]} == set(names)


@pytest.mark.control("hk-bot-05")
def test_bot_release(target):
    """The bot runs a complete release installed from hashed wheels; `current` points at it"""
    current = target.check_output(f"readlink -f {CURRENT_LINK}").strip()
    assert current.startswith(role.RELEASES_DIR + "/"), current
    for marker in (".complete", "release.lock"):
        assert target.run(f"test -f {current}/{marker}").rc == 0, f"{current} has no {marker}"
    lock = target.check_output(f"cat {current}/release.lock")
    pins = [line for line in lock.splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", line)]
    assert pins and "hardkit-bot==" in lock and lock.count("--hash=sha256:") >= len(pins), "unhashed pins"
    unit_text = target.check_output(f"systemctl cat {UNIT}")
    assert f"ExecStart={CURRENT_LINK}/bin/hardkit-bot run --config {CONFIG_FILE}" in unit_text


@pytest.mark.control("hk-bot-06")
def test_bot_config(target):
    """The bot's config is the inventory's, root-owned and readable by the bot and its operators only"""
    stats = os_state.stats(target, [CONFIG_DIR, CONFIG_FILE])
    assert stats.get(CONFIG_DIR) == ("root", OPERATORS_GROUP, 0o750), stats
    assert stats.get(CONFIG_FILE) == ("root", OPERATORS_GROUP, 0o640), stats
    assert os_state.text(target, CONFIG_FILE) == bot_config.rendered(target.data), "bot.toml differs from the inventory"


@pytest.mark.control("hk-bot-07")
def test_bot_control_plane_local(target):
    """The bot's control and dashboard are Unix sockets for its operators only; it listens on no network port"""
    stats = os_state.stats(target, [RUNTIME_DIR, CONTROL_SOCKET, DASHBOARD_SOCKET])
    assert stats.get(RUNTIME_DIR, ())[:2] == (BOT_USER, OPERATORS_GROUP) and stats[RUNTIME_DIR][2] & 0o007 == 0, stats
    for sock in (CONTROL_SOCKET, DASHBOARD_SOCKET):
        assert stats.get(sock, ())[:2] == (BOT_USER, OPERATORS_GROUP), stats
        assert stats[sock][2] & 0o007 == 0, f"{sock} mode {oct(stats[sock][2])}"
    pid = _show(target).get("MainPID")
    listening = target.check_output("ss -H -ltnup")
    assert f"pid={pid}," not in listening, f"the bot listens on a network port:\n{listening}"


@pytest.mark.control("hk-bot-08")
def test_bot_trading_state(target):
    """The bot answers on its control socket in the trading state the inventory expects"""
    status = _status(target)
    want = bot_config.BOT_RUNNING.value(target.data)
    assert status["state"] == want, f"bot is {status['state']} ({status.get('reason')}), inventory expects {want}"


@pytest.mark.control("hk-bot-09")
def test_bot_credentials_are_ciphertexts(target):
    """Every file in the credential store is a systemd-creds ciphertext of its own name (nothing stored in clear)"""
    names = [n for n in target.check_output(f"ls -1 {CREDSTORE}").split() if n.startswith(role.CRED_PREFIX)]
    assert names, f"{CREDSTORE} holds no credential of the bot"
    bad = []
    for file in names:
        name = file.removeprefix(role.CRED_PREFIX)
        # The plaintext goes to /dev/null: only whether it decrypts under its own name is read.
        res = target.run(f"systemd-creds decrypt --name={shlex.quote(name)} {CREDSTORE}/{shlex.quote(file)} - >/dev/null")
        if res.rc != 0:
            bad.append(f"{file}: {res.stderr.strip()[-120:]}")
    assert not bad, "; ".join(bad)


@pytest.mark.control("hk-bot-10")
def test_a_disabled_bot_does_not_run(target):
    """With bot_enabled false the bot's unit, if installed, is neither running nor started at boot, and no
    process runs as the bot's user"""
    unit = _unit(target)
    if unit.get("LoadState") != "not-found":
        assert unit.get("ActiveState") in ("inactive", "failed"), unit
        assert unit.get("UnitFileState") in ("disabled", "masked"), unit
    procs = target.run(f"pgrep -u {BOT_USER} -a || true").stdout.strip()
    assert procs == "", f"processes of {BOT_USER} run: {procs}"
