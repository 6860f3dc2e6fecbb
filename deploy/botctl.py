"""`hardkit bot ...`: operate the bots of an inventory from the controller, over SSH, never an open port.

Each verb runs the bot's own command line on the host as the admin (a member of the control
socket's group), for every selected host in parallel, and prints one row per host. What a row
says was checked: `halt` reads the bot's state back after halting it, and when the bot's socket
does not answer it stops the unit, latches HALTED in the ledger as the bot's own user (the bot's
lock proves nothing else writes it), starts the unit again and reads the state back. A host that
could not be brought to the asked state is a failure, and the exit code says so.

Exit codes: 0 every host did what was asked · 1 a host refused or failed · 3 a host or its bot
could not be reached.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from deploy import connect
from deploy.inventory import Host
from roles import bot as bot_role
from roles.bot_paths import BOT_USER, CONTROL_SOCKET, CURRENT_LINK, INSTALL_ROOT, OPERATORS_GROUP, UNIT

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 3
#: Seconds the bot has to answer a socket command before it counts as not answering (a wedged or
#: stopped process accepts the connection and never replies). The CLI is told the same (--wait), so
#: a reset the bot reads after this is refused by the bot, never executed after the row said it failed;
#: `timeout` is the backstop for a CLI that hangs anyway.
ANSWER_SECONDS = 10
BOT = f"timeout -k 2 {ANSWER_SECONDS + 5} {bot_role.CLI_LINK}"
WAIT = f"--wait {ANSWER_SECONDS}"
SOCKET = f"--socket {CONTROL_SOCKET}"


@dataclass
class Row:
    host: str
    ok: bool
    summary: str
    unreachable: bool = False
    detail: dict | None = None


class Session:
    """One SSH login to a host (as the deploy would log in), with sudo when the login needs it."""

    def __init__(self, h: Host):
        self.login = connect.resolve(h)
        self.client = connect.open_client(h, self.login.user, port=self.login.port)

    def run(self, command: str, root: bool = False, timeout: float = 120.0) -> tuple[int, str, str]:
        if root and self.login.sudo:
            command = "sudo -n sh -c " + shlex.quote(command)
        try:
            return connect.run(self.client, command, timeout=timeout)
        except (TimeoutError, OSError) as e:
            return 124, "", f"no answer within {timeout:.0f} s ({type(e).__name__})"

    def close(self):
        self.client.close()


def status_of(s: Session) -> dict | None:
    """The bot's own status over its socket, or None when it does not answer."""
    rc, out, _ = s.run(f"{BOT} status --json {SOCKET}")
    if rc != 0:
        return None
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return None


def _offline(command: str) -> str:
    """Run the bot's CLI as the bot's user with its state and credentials, while the unit is stopped
    (the bot's lock is then free: the bot itself refuses to write a ledger a running bot holds)."""
    creds = " ".join(f"-p LoadCredentialEncrypted={c}:{bot_role.cred_path(c)}" for c in [bot_role.AUDIT_KEY])
    return (f"systemd-run --quiet --wait --pipe --collect -p User={BOT_USER} -p Group={OPERATORS_GROUP} "
            f"-p StateDirectory={bot_role.STATE_DIR.rsplit('/', 1)[1]} {creds} {CURRENT_LINK}/bin/hardkit-bot {command}")


def _unit_active(s: Session) -> bool:
    return s.run(f"systemctl is-active --quiet {UNIT}")[0] == 0


def _wait_answering(s: Session) -> dict | None:
    s.run(bot_role.wait_for_bot_command(), root=True, timeout=bot_role.START_TIMEOUT + 30)
    return status_of(s)


def do_status(s: Session, args) -> Row:
    st = status_of(s)
    if st is None:
        active = _unit_active(s)
        return Row(s.login.host, False, f"bot not answering (unit {'active' if active else 'not active'})",
                   unreachable=True)
    positions = len(st.get("positions") or [])
    orders = len(st.get("open_orders") or [])
    return Row(s.login.host, True, f"{st['state']:<9} equity {st.get('equity')}  exposure {st.get('exposure')}  "
               f"positions {positions}  orders {orders}  ({st.get('reason') or ''})", detail=st)


def do_halt(s: Session, args) -> Row:
    reason = shlex.quote(args.reason)
    rc, out, err = s.run(f"{BOT} halt --reason {reason} {WAIT} {SOCKET}")
    st = status_of(s) if rc == 0 else None
    if st and st["state"] in ("HALTED", "KILLED"):
        return Row(s.login.host, True, f"{st['state']} ({st.get('reason')}), confirmed by the running bot", detail=st)
    # The socket did not answer (or the bot did not latch): take the unit down, latch in the ledger, bring it back.
    why = (err or out).strip().splitlines()[-1:] or [f"exit {rc}"]
    s.run(f"systemctl stop {UNIT}", root=True)
    if _unit_active(s):
        return Row(s.login.host, False, f"NOT HALTED: the bot did not answer ({why[0]}) and the unit did not stop")
    rc2, out2, err2 = s.run(_offline(f"halt --reason {reason}"), root=True)
    if rc2 != 0:
        return Row(s.login.host, False, f"NOT CONFIRMED: unit stopped, but latching HALTED failed: "
                   f"{(err2 or out2).strip()[-200:]} (the bot is stopped; it is not trading)")
    s.run(f"systemctl start {UNIT}", root=True)
    st = _wait_answering(s)
    if st and st["state"] in ("HALTED", "KILLED"):
        return Row(s.login.host, True, f"{st['state']} ({st.get('reason')}): the socket did not answer ({why[0]}), "
                   "so the unit was restarted into the latched halt", detail=st)
    return Row(s.login.host, False, "NOT CONFIRMED: HALTED latched in the ledger while the unit was stopped, "
               "but the restarted bot does not answer; check `hardkit bot logs`")


def do_flatten(s: Session, args) -> Row:
    flatten = f"timeout -k 2 {float(args.timeout) + 30} {bot_role.CLI_LINK} flatten --timeout {float(args.timeout)}"
    rc, out, err = s.run(f"{flatten} {SOCKET}", timeout=args.timeout + 60)
    st = status_of(s)
    text = (out + err).strip().splitlines()
    if rc == 0 and st is not None:
        return Row(s.login.host, True, f"flat, {st['state']} (the bot verified flat on the exchange)", detail=st)
    return Row(s.login.host, False, f"NOT FLAT (exit {rc}): {text[-1] if text else ''}", unreachable=rc == 3)


def do_reset(s: Session, args) -> Row:
    extra = " --new-day" if getattr(args, "new_day", False) else ""
    rc, out, err = s.run(f"{BOT} reset --note {shlex.quote(args.note)}{extra} {WAIT} {SOCKET}")
    st = status_of(s)
    if rc == 0 and st and st["state"] == "ACTIVE":
        return Row(s.login.host, True, f"ACTIVE after reset ({st.get('reason')})", detail=st)
    text = (out + err).strip().splitlines()
    state = st["state"] if st else "unknown"
    return Row(s.login.host, False, f"not reset (exit {rc}, state {state}): {text[-1] if text else ''}",
               unreachable=rc == 3)


def do_logs(s: Session, args) -> Row:
    rc, out, err = s.run(f"journalctl -u {UNIT} -n {int(args.lines)} --no-pager -o short-iso", root=True)
    for line in out.splitlines():
        print(f"{s.login.host}: {line}")
    return Row(s.login.host, rc == 0, f"{len(out.splitlines())} line(s)" if rc == 0 else err.strip())


def do_rollback(s: Session, args) -> Row:
    rc, out, _ = s.run(f"readlink {INSTALL_ROOT}/current; readlink {INSTALL_ROOT}/previous", root=True)
    links = out.split()
    if len(links) < 2:
        return Row(s.login.host, False, "no previous release to go back to")
    current, previous = links[0], links[1]
    if s.run(f"test -f {INSTALL_ROOT}/{previous}/.complete", root=True)[0] != 0:
        return Row(s.login.host, False, f"previous release {previous} is not complete; not switching")
    rc, out, err = s.run(bot_role.swap_releases_command(current, previous), root=True)
    if rc != 0:
        return Row(s.login.host, False, f"rollback failed: {(err or out).strip()[-200:]}")
    st = _wait_answering(s)
    name = previous.rsplit("/", 1)[-1]
    if st is None:
        return Row(s.login.host, False, f"switched to {name}, but the bot does not answer; check `hardkit bot logs`")
    return Row(s.login.host, True, f"running {name} (was {current.rsplit('/', 1)[-1]}), {st['state']}", detail=st)


VERBS: dict[str, Callable[[Session, object], Row]] = {
    "status": do_status, "halt": do_halt, "flatten": do_flatten, "reset": do_reset,
    "logs": do_logs, "rollback": do_rollback,
}


def dashboard(h: Host, port: int = 0, ready: Callable[[str], None] | None = None) -> int:
    """Serve one host's dashboard on this controller's loopback until interrupted.

    sshd forwards nothing (AllowTcpForwarding no is a checked control), so each browser connection
    gets its own SSH exec channel running `hardkit-bot dashboard-proxy` as the admin, which copies
    bytes to the bot's dashboard socket. Nothing on the host listens on a network port.
    """
    from deploy.tunnel import Tunnel
    from roles.bot_paths import RUNTIME_DIR

    s = Session(h)
    transport = s.client.get_transport()
    proxy = f"{bot_role.CLI_LINK} dashboard-proxy --runtime-dir {RUNTIME_DIR}"

    def opener():
        channel = transport.open_session()
        channel.exec_command(proxy)
        return channel

    try:
        with Tunnel(opener, port=port) as tunnel:
            (ready or (lambda url: print(f"{h.name}: dashboard at {url} (metrics: {url}metrics); Ctrl-C to stop",
                                         flush=True)))(tunnel.url)
            tunnel.wait()
    finally:
        s.close()
    return EXIT_OK


def _one(h: Host, verb: str, args) -> Row:
    try:
        s = Session(h)
    except (connect.LoginError, OSError) as e:
        return Row(h.name, False, f"unreachable: {e}", unreachable=True)
    try:
        return VERBS[verb](s, args)
    finally:
        s.close()


def run(hosts: list[Host], verb: str, args) -> int:
    """Run one verb on every host in parallel; print a row per host; return the exit code."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        rows = list(pool.map(lambda h: _one(h, verb, args), hosts))
    if getattr(args, "json", False):
        print(json.dumps({r.host: {"ok": r.ok, "summary": r.summary, "unreachable": r.unreachable,
                                   "status": r.detail} for r in rows}, indent=2))
    else:
        width = max(len(r.host) for r in rows)
        for r in rows:
            mark = "ok    " if r.ok else ("UNREACH" if r.unreachable else "FAILED")
            print(f"{r.host:<{width}}  {mark:<7} {r.summary}", file=sys.stdout)
    if all(r.ok for r in rows):
        return EXIT_OK
    return EXIT_UNREACHABLE if any(r.unreachable and not r.ok for r in rows) else EXIT_FAILED

