"""The trading bot as a sandboxed service: offline release install, validated config, credentials, unit.

- Release: the controller's wheelhouse (roles/bot_release.py) is uploaded once per release and
  installed offline with hashes into /opt/hardkit-bot/releases/<version>-<digest>; `current`
  switches atomically (a rename of a symlink) and `previous` keeps the one before, for
  `hardkit bot rollback`. An installed release is marked complete only after its install and a
  smoke run succeed; a half-installed one is removed and redone on the next deploy.
- Config: /etc/hardkit-bot/bot.toml, already validated on the controller with the bot's own
  validator (roles/bot_config.py), checked again on the host by the release that will run it.
- Credentials: systemd-creds ciphertexts in /etc/credstore.encrypted, read by the unit with
  LoadCredentialEncrypted=. The audit chain's key is made on the host and never leaves it.
- Unit: templates/bot/hardkit-bot.service.j2 (`systemd-analyze security` exposure 1.3).
  Restarted only when something it runs changed; the deploy then waits until the bot answers on
  its control socket, so "deployed" means "running".
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, deploy, operation
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from roles import bot_egress, bot_release
from roles.bot_config import (BOT_ENABLED, HOST_CA_BUNDLE, KEYS as CONFIG_KEYS, config_for, controller_ca_bundle, mode,
                              rendered)
from roles.bot_paths import (BOT_USER, CONFIG_DIR, CONFIG_FILE, CONTROL_SOCKET, CRED_PREFIX, CREDSTORE,
                             CURRENT_LINK, INSTALL_ROOT, OPERATORS_GROUP, RELEASES_DIR, STATE_DIR, UNIT)
from roles.ops import Lines, ensure_modes, install_file, quiet_or_fail, render
from roles.secrets_data import BOT_CREDENTIALS, CREDENTIALS_CHANGED_KEY, SECRETS_ENV, missing_secrets
from roles.updates import INHIBIT_DIR, INHIBIT_GROUP

KEYS = CONFIG_KEYS

PACKAGES = ["python3-venv"]
PREVIOUS_LINK = f"{INSTALL_ROOT}/previous"
INCOMING = f"{INSTALL_ROOT}/incoming"
#: The command line the admin (and the controller) use on the host.
CLI_LINK = "/usr/local/bin/hardkit-bot"
#: The audit chain's HMAC key: made on the host, encrypted with the host's credential key.
AUDIT_KEY = "audit-key"
#: How long a restarted bot has to answer on its control socket before the deploy fails.
START_TIMEOUT = 90


def host_problems(data) -> list[str]:
    """What stops this host's bot from running as configured, found before any host is touched:
    a live config needs the exchange credentials in its secrets environment, and an egress
    allow-list to reach the exchange through."""
    if not BOT_ENABLED.value(data) or not isinstance(config_for(data), dict) or mode(config_for(data)) != "live":
        return []
    problems = missing_secrets(data, BOT_CREDENTIALS, "bot is live (exchange.kind is not 'paper')")
    if not bot_egress.ENDPOINTS.value(data):
        problems.append("bot is live but bot_egress_endpoints is empty: list the exchange's host:port, or the "
                        "bot's egress allow-list lets it reach nothing")
    return problems


def cred_path(name: str) -> str:
    return f"{CREDSTORE}/{CRED_PREFIX}{name}"


class ReleaseState(FactBase):
    """`{"current": "<release>", "previous": "<release>", "complete": [...], "all": [...]}` under /opt/hardkit-bot."""

    def command(self):
        return (f"cd {INSTALL_ROOT} 2>/dev/null || exit 0; "
                "printf 'current %s\\n' \"$(readlink current 2>/dev/null)\"; "
                "printf 'previous %s\\n' \"$(readlink previous 2>/dev/null)\"; "
                "for r in releases/*/; do [ -d \"$r\" ] || continue; r=${r%/}; "
                "if [ -e \"$r/.complete\" ]; then echo \"complete $r\"; else echo \"partial $r\"; fi; done")

    @staticmethod
    def default():
        return {"current": "", "previous": "", "complete": [], "all": []}

    def process(self, output):
        state = self.default()
        for line in output:
            kind, _, value = line.partition(" ")
            value = value.strip().removeprefix("releases/")
            if kind in ("current", "previous"):
                state[kind] = value
            elif kind in ("complete", "partial"):
                state["all"].append(value)
                if kind == "complete":
                    state["complete"].append(value)
        return state


@operation()
def install_release(release: str, tarball: str):
    """
    Install a wheelhouse offline into its own release folder (nothing if it is already complete).

    + release: the release name, ``<version>-<digest>``
    + tarball: the wheelhouse tarball on the controller (roles/bot_release.py)
    """
    if release in host.get_fact(ReleaseState)["complete"]:
        host.noop(f"release {release} is installed")
        return
    target, work = f"{RELEASES_DIR}/{release}", f"{INCOMING}/{release}"
    q_target, q_work = shlex.quote(target), shlex.quote(work)
    yield f"install -d -m 0755 {INSTALL_ROOT} {RELEASES_DIR} && install -d -m 0700 {INCOMING}"
    yield FileUploadCommand(tarball, f"{work}.tar", remote_temp_filename=host.get_temp_filename(f"{work}.tar"))
    # umask 022: the login's umask (027 after the OS baseline) would hide the venv from the bot's user.
    yield (f"umask 022 && rm -rf {q_target} {q_work} && mkdir -p {q_work} && tar -xf {q_work}.tar -C {q_work} && "
           f"python3 -m venv {q_target} && "
           f"{q_target}/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check "
           f"--find-links {q_work} --require-hashes -r {q_work}/release.lock && "
           f"{q_target}/bin/hardkit-bot config-doc >/dev/null && "
           f"cp {q_work}/release.lock {q_target}/release.lock && touch {q_target}/.complete && "
           f"rm -rf {q_work} {q_work}.tar")


@operation()
def switch_release(release: str, keep: int = 2):
    """
    Point `current` at a release atomically, keep the one it replaces as `previous`, prune the rest.

    + release: an installed release's name
    + keep: how many releases stay installed (current and previous)
    """
    state = host.get_fact(ReleaseState)
    if state["current"] == release:
        host.noop(f"current is {release}")
        return
    old = state["current"]
    commands = [f"cd {INSTALL_ROOT}",
                f"ln -sfn releases/{release} current.new", "mv -Tf current.new current"]
    if old:
        commands += [f"ln -sfn releases/{old} previous.new", "mv -Tf previous.new previous"]
    keep_names = {release, old} if old else {release}
    for stale in state["all"]:
        if stale not in keep_names and len(keep_names) >= keep:
            commands.append(f"rm -rf releases/{shlex.quote(stale)}")
    yield " && ".join(commands)


@operation()
def host_generated_credential(cred: str, size: int = 32):
    """
    A random credential made on the host and encrypted there (the plaintext never leaves a pipe).

    + cred: the credential name (``LoadCredentialEncrypted=`` name)
    + size: bytes of randomness
    """
    path = cred_path(cred)
    present = host.get_fact(Lines, command=f"test -s {shlex.quote(path)} && echo present || true")
    if present:
        host.noop(f"{path} exists")
        return
    yield (f"install -d -m 0700 {CREDSTORE} && umask 077 && "
           f"head -c {size} /dev/urandom | systemd-creds encrypt --name={cred} - {shlex.quote(path)}.new && "
           f"mv -f {shlex.quote(path)}.new {shlex.quote(path)}")


def credentials_wanted(credstore_listing: list[str]) -> list[str]:
    """The credential names the unit loads, from the credential store's file names: the host's own
    audit key, and the delivered secrets the bot knows."""
    present = {name.removeprefix(CRED_PREFIX) for name in credstore_listing if name.startswith(CRED_PREFIX)}
    return [AUDIT_KEY] + sorted(present & set(BOT_CREDENTIALS))


def render_unit(credentials: list[str], requires: list[str], current: str = CURRENT_LINK) -> str:
    return render("bot/hardkit-bot.service.j2", release_dir=current, requires=requires, user=BOT_USER,
                  group=OPERATORS_GROUP, inhibit_group=INHIBIT_GROUP, current=current,
                  config_file=CONFIG_FILE, inhibit_dir=INHIBIT_DIR, credentials=credentials,
                  credstore=CREDSTORE, cred_prefix=CRED_PREFIX, state_name=STATE_DIR.rsplit("/", 1)[1],
                  sandbox=SANDBOX)


#: The unit's sandbox, as written into it and checked in force (`systemctl show`) by the compliance
#: checks. With User=, Group= and the rest of the unit it scores 1.3 in `systemd-analyze security`
#: (what is left: it needs the network, AF_UNIX for its sockets, and its supplementary group).
SANDBOX = [
    ("UMask", "0077"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("PrivateMounts", "yes"),
    ("DevicePolicy", "closed"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    # CPython without a JIT never needs writable executable memory.
    ("MemoryDenyWriteExecute", "yes"),
    ("RemoveIPC", "yes"),
    ("KeyringMode", "private"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources @mount @debug @cpu-emulation @obsolete @raw-io @reboot @swap "
                         "@module @clock"),
    ("SystemCallErrorNumber", "EPERM"),
]
#: The most `systemd-analyze security` may score the unit (offline in the unit tests, live in verify).
MAX_EXPOSURE = 1.5

#: Units the bot must not run without: its egress allow-list (no table, no bot).
REQUIRED_UNITS = [bot_egress.BOOT_UNIT]


def wait_for_bot_command() -> str:
    """Wait until the bot answers `status` on its control socket (fails the deploy if it never does)."""
    status = f"{CLI_LINK} status --json --socket {CONTROL_SOCKET} >/dev/null 2>&1"
    return (f"i=0; until {status}; do i=$((i+1)); "
            f"if [ $i -ge {START_TIMEOUT} ] || systemctl is-failed --quiet {UNIT}; then "
            f"echo 'hardkit: the bot did not come up; see journalctl -u {UNIT}' >&2; "
            f"journalctl -u {UNIT} -n 20 --no-pager -o cat >&2; exit 1; fi; sleep 1; done")


def swap_releases_command(current: str, previous: str) -> str:
    """Make `previous` current and `current` previous (both link targets as readlink shows them), atomically
    each, and restart the bot on it: `hardkit bot rollback` and a deploy's automatic rollback."""
    return (f"cd {INSTALL_ROOT} && ln -sfn {shlex.quote(previous)} current.new && mv -Tf current.new current && "
            f"ln -sfn {shlex.quote(current)} previous.new && mv -Tf previous.new previous && "
            f"systemctl reset-failed {UNIT} 2>/dev/null; systemctl restart {UNIT}")


def wait_or_roll_back_command(release: str, previous: str) -> str:
    """Wait for the bot on a release this deploy switched to; if it never answers, go back to `previous`
    (the release that ran before), wait for that one, and fail the deploy either way, saying which runs."""
    new, old = f"releases/{release}", f"releases/{previous}"
    back = (f"echo 'hardkit: release {release} did not start; going back to {previous}' >&2; "
            f"{swap_releases_command(new, old)} && ( {wait_for_bot_command()} ) && "
            f"echo 'hardkit: rolled back: the bot runs release {previous} again; release {release} stays "
            f"installed as previous' >&2; exit 1")
    return f"( {wait_for_bot_command()} ) || {{ {back}; }}"


def stop_disabled_bot():
    """bot_enabled false on a host that has the bot: it is stopped and not started at boot. Its ledger,
    releases, config and credentials stay (the audit trail and a later re-enable need them)."""
    installed = host.get_fact(Lines, command=f"systemctl cat {UNIT} >/dev/null 2>&1 && echo installed || true")
    if not installed:
        host.noop("bot_enabled is false: no bot on this host")
        return
    systemd.service(name="bot_enabled is false: the installed bot is stopped and not started at boot",
                    service=UNIT, running=False, enabled=False)


@deploy("Trading bot")
def bot():
    data = host.data
    if not BOT_ENABLED.value(data):
        stop_disabled_bot()
        return
    apt.packages(name="Install python3-venv (the bot's offline install)", packages=PACKAGES)

    release = bot_release.current()
    before = host.get_fact(ReleaseState)
    # A new release that never answers is rolled back to the one that ran (complete, so it can run again).
    roll_back_to = before["current"] if before["current"] not in ("", release.name) and \
        before["current"] in before["complete"] else ""
    installed = install_release(name=f"Bot release {release.name} (offline, hashed wheels)",
                                release=release.name, tarball=str(release.tarball))
    switched = switch_release(name=f"Bot release {release.name} is current", release=release.name)
    files.link(name="hardkit-bot on the admin's PATH", path=CLI_LINK, target=f"{CURRENT_LINK}/bin/hardkit-bot")

    files.directory(name="Bot config folder", path=CONFIG_DIR, user="root", group=OPERATORS_GROUP, mode="0750")
    ca_bundle, restart_for = controller_ca_bundle(data), []
    if ca_bundle:
        restart_for = [install_file(name="The exchange's private CA bundle", dest=HOST_CA_BUNDLE, mode="0640", user="root",
                     group=OPERATORS_GROUP, content=open(ca_bundle).read())]
    config = install_file(name="Bot config (validated by the bot's own validator)", dest=CONFIG_FILE,
                          content=rendered(data), mode="0640", user="root", group=OPERATORS_GROUP,
                          validate=f"{CURRENT_LINK}/bin/hardkit-bot check-config --config {{path}} >/dev/null")

    audit_key = host_generated_credential(name="Audit chain key (made and encrypted on the host)", cred=AUDIT_KEY)
    ensure_modes(name="Credential store is root-only", specs={CREDSTORE: ("root", "root", "0700")})
    unit = install_file(name=f"Unit: {UNIT} (sandboxed)", dest=f"/etc/systemd/system/{UNIT}", mode="0644",
                        content=render_unit(credentials_wanted(
                            host.get_fact(Lines, command=f"ls -1 {CREDSTORE} 2>/dev/null || true")), REQUIRED_UNITS),
                        validate=quiet_or_fail("systemd-analyze verify {path}"))
    server.shell(name="Reload systemd for the bot unit", _if=unit.did_change, commands=["systemctl daemon-reload"])

    creds_changed = bool(set(data.get(CREDENTIALS_CHANGED_KEY) or []) & set(BOT_CREDENTIALS))  # not the backup's
    changed = any_changed(installed, switched, config, audit_key, unit, *restart_for)
    restart = server.shell(name="Restart the bot for its new release, config, unit or credentials",
                           _if=lambda: creds_changed or changed(), commands=[f"systemctl reset-failed {UNIT} 2>/dev/null; systemctl restart {UNIT}"])
    if host.get_fact(Lines, command=f"systemctl is-failed {UNIT} 2>/dev/null || true") == ["failed"]:
        server.shell(name="Clear the failed bot's start limit (this deploy starts it again)",
                     commands=[f"systemctl reset-failed {UNIT}"])
    started = systemd.service(name="The bot runs and starts at boot", service=UNIT, running=True, enabled=True)
    wait = wait_or_roll_back_command(release.name, roll_back_to) if roll_back_to else wait_for_bot_command()
    server.shell(name="The bot answers on its control socket", _if=any_changed(restart, started),
                 commands=[wait])


apply = bot
