"""The bot's credentials, from the repository's age files to the host's systemd credential store.

Outside pyinfra on purpose: pyinfra prints operation arguments and `_stdin` in its debug and JSON
output. Here each value is decrypted into the controller's memory only and written to the SSH
channel's stdin of `systemd-creds encrypt --name=NAME - OUT` (never a command argument, never a
file on the host), which writes /etc/credstore.encrypted/hardkit-bot.NAME; the unit loads it with
`LoadCredentialEncrypted=NAME:/etc/credstore.encrypted/hardkit-bot.NAME`.

Key: `--with-key=host+tpm2` when the host has a TPM2 resource manager (/dev/tpmrm0), else
`--with-key=host` (/var/lib/systemd/credential.secret); never systemd's null key.

Idempotent: the host keeps, root-only in /var/lib/hardkit/, a random 32-byte salt (made on first
use) and HMAC-SHA256(salt, value) of each credential it holds. A value whose keyed digest and file
are in place is not sent again; a changed one is; one that left the environment is removed. Only
names recorded there are ever removed (the host-generated `audit-key` is never touched).
"""

from __future__ import annotations

import hashlib
import hmac
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko

from deploy import connect
from deploy.inventory import Host
from deploy.secrets_store import SecretsError, identity_path, load_identity, open_env, secrets_root
from roles.bot_paths import CRED_PREFIX, CREDSTORE, DEPLOY_RECORD_DIR
from roles.secrets_data import DELIVERED_CREDENTIALS, HOST_GENERATED, SECRETS_ENV

SALT_FILE = f"{DEPLOY_RECORD_DIR}/credentials.salt"
#: One line per delivered credential: `<name> <hex HMAC-SHA256(salt, value)>`.
DIGESTS_FILE = f"{DEPLOY_RECORD_DIR}/credentials.digests"


#: The last line of the host's state report: without it the report is incomplete and nothing is decided.
STATE_END = "end"

#: Seconds one delivery command on the host may take (reading state, one systemd-creds encrypt).
COMMAND_TIMEOUT = 120


class DeliveryError(Exception):
    pass


# --- before any host is touched: what each host should hold -------------------------------------

def wanted_values(hosts: list[Host], identity: str | None = None) -> dict[str, dict[str, bytes]]:
    """{host: every value of its secrets environment} (empty without secrets_env).

    Every environment a host names must exist and every file in it must decrypt with the operator's
    identity; otherwise SecretsError lists every problem at once, one line each.
    """
    envs = sorted({h.get(SECRETS_ENV) for h in hosts} - {None})
    values, problems = {}, []
    if envs:
        ident = load_identity(identity_path(identity))
    for name in envs:
        try:
            env = open_env(name, secrets_root()).require()
            problems += [f"secrets_env {name!r}: {env.file(n)} would replace the host-generated credential "
                         f"{n!r}; remove it" for n in HOST_GENERATED if n in env.names()]
            values[name] = env.decrypt_all(ident)
        except SecretsError as e:
            problems += [f"secrets_env {name!r}: {line}" for line in str(e).splitlines()]
    if problems:
        raise SecretsError("\n".join(problems))
    return {h.name: values.get(h.get(SECRETS_ENV), {}) for h in hosts}


def bot_credentials(values: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """Of each host's values (wanted_values), those delivered as credentials: the bot's and the backup's
    (each unit loads only its own: roles/bot.py and roles/backup.py)."""
    return {host: {n: v for n, v in got.items() if n in DELIVERED_CREDENTIALS} for host, got in values.items()}


def wanted_credentials(hosts: list[Host], identity: str | None = None) -> dict[str, dict[str, bytes]]:
    """{host: {credential: value}} for every host (empty without secrets_env); see wanted_values."""
    return bot_credentials(wanted_values(hosts, identity))


# --- on one host ---------------------------------------------------------------------------------

@dataclass
class Delivery:
    sent: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return sorted(self.sent + self.removed)


def digest(salt: bytes, value: bytes) -> str:
    return hmac.new(salt, value, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Store:
    """Where one kind of secret lives on the host, as shell commands run as root.

    Values reach `write` on its stdin only; `held` prints the name of each value in place, one a line."""
    digests_file: str
    held: str
    write: Callable[[str], str]
    remove: Callable[[str], str]


def _encrypt_command(name: str, prefix: str = CRED_PREFIX) -> str:
    out = f"{CREDSTORE}/{prefix}{name}"
    return (f"umask 077; mkdir -p -m 700 {CREDSTORE}; k=host; [ -c /dev/tpmrm0 ] && k=host+tpm2; "
            f"systemd-creds encrypt --with-key=$k --name={name} - {out}.tmp && mv -f {out}.tmp {out} "
            f"|| {{ rm -f {out}.tmp; exit 1; }}")


def credstore(digests_file: str, prefix: str) -> Store:
    """systemd-creds ciphertexts in the credential store, one file per credential: <prefix><name>."""
    return Store(
        digests_file=digests_file,
        held=(f"for f in {CREDSTORE}/{prefix}*; do [ -f \"$f\" ] && echo \"${{f#{CREDSTORE}/{prefix}}}\"; "
              "done; true"),
        write=lambda name: _encrypt_command(name, prefix),
        remove=lambda name: f"rm -f {CREDSTORE}/{prefix}{name}")


#: The bot's credentials: systemd-creds ciphertexts in the credential store.
BOT_STORE = credstore(DIGESTS_FILE, CRED_PREFIX)


def _read_state(create_salt: bool, store: Store = BOT_STORE) -> str:
    """Prints `salt HEX` (or `salt -`), `digest NAME HEX` lines and `file NAME` per value held."""
    make = (f"mkdir -p -m 700 {DEPLOY_RECORD_DIR}; [ -s {SALT_FILE} ] || {{ head -c 32 /dev/urandom > "
            f"{SALT_FILE}.tmp && mv {SALT_FILE}.tmp {SALT_FILE}; }}; ") if create_salt else ""
    return ("umask 077; " + make +
            f"if [ -s {SALT_FILE} ]; then echo salt $(od -An -tx1 -v {SALT_FILE} | tr -d ' \\n'); "
            "else echo salt -; fi; "
            f"[ -f {store.digests_file} ] && sed 's/^/digest /' {store.digests_file}; "
            f"{{ {store.held}; }} | sed 's/^/file /'; echo {STATE_END}")


def _record_command(store: Store, removed: list[str]) -> str:
    rm = "".join(store.remove(n) + "; " for n in removed)
    return f"umask 077; {rm}cat > {store.digests_file}.tmp && mv -f {store.digests_file}.tmp {store.digests_file}"


class _Session:
    """Commands as root over one SSH login (through `sudo -n` when the login is the admin): the login's
    own connection when the pre-flight kept it open (connect.resolve(keep=True)), else a new one."""

    def __init__(self, host: Host, login: connect.Login):
        self.name = host.name
        self.sudo = login.sudo
        self.client = login.open_client()
        self.owned = self.client is None
        if self.owned:
            self.client = connect.open_client(host, login.user, port=login.port)

    def run(self, script: str, stdin: bytes = b"") -> str:
        line = ("sudo -n " if self.sudo else "") + "sh -c " + shlex.quote(script)
        chan = self.client.get_transport().open_session(timeout=30)
        chan.settimeout(COMMAND_TIMEOUT)
        chan.exec_command(line)
        chan.sendall(stdin)
        chan.shutdown_write()
        out, err = _drain(chan, self.name)
        rc = chan.recv_exit_status()
        chan.close()
        if rc != 0:
            raise DeliveryError(f"{self.name}: credential delivery failed (exit {rc}): "
                                f"{err.decode(errors='replace').strip()[-300:]}")
        return out.decode(errors="replace")

    def close(self):
        if self.owned:
            self.client.close()


def _drain(chan, host: str) -> tuple[bytes, bytes]:
    """Everything the command prints, until the channel's end of file (at most COMMAND_TIMEOUT seconds).

    Not until its exit status: sshd sends that as soon as the command's process exits, which can be
    before it has read the last output from the command's pipe, so a loaded host would truncate it.
    """
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while time.monotonic() < deadline:
        if chan.recv_ready():
            out += chan.recv(65536)
        elif chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        elif chan.eof_received or chan.closed:
            if chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                # The last data may have arrived, with the EOF, after the checks above: take it too
                # (paramiko buffers a channel's data before it marks the EOF that follows it).
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                return bytes(out), bytes(err)
        else:
            chan.status_event.wait(0.05)
    chan.close()
    raise DeliveryError(f"{host}: credential delivery: no answer within {COMMAND_TIMEOUT} s")


def sync_host(host: Host, login: connect.Login, wanted: dict[str, bytes], dry: bool = False,
              store: Store = BOT_STORE) -> Delivery:
    """Bring one host's values in `store` to `wanted`; with dry, only say what would change."""
    session = _Session(host, login)
    try:
        state = session.run(_read_state(create_salt=bool(wanted) and not dry, store=store))
        salt, recorded, present = _parse_state(state, host.name)
        delivery = Delivery()
        digests = {}
        for name, value in sorted(wanted.items()):
            digests[name] = digest(salt, value) if salt else ""
            if not salt or recorded.get(name) != digests[name] or name not in present:
                delivery.sent.append(name)
        delivery.removed = sorted(n for n in recorded if n not in wanted)
        if dry or not (delivery.sent or delivery.removed or set(recorded) != set(digests)):
            return delivery
        for name in delivery.sent:
            session.run(store.write(name), stdin=wanted[name])
        record = "".join(f"{n} {d}\n" for n, d in sorted(digests.items()))
        session.run(_record_command(store, delivery.removed), stdin=record.encode())
        return delivery
    finally:
        session.close()


def _parse_state(text: str, host: str) -> tuple[bytes | None, dict[str, str], set[str]]:
    """(salt, recorded digests, credential files present) from _read_state's report.

    An incomplete report raises: read as "nothing recorded" it would re-send every credential."""
    lines = text.splitlines()
    if not lines or lines[-1] != STATE_END:
        raise DeliveryError(f"{host}: incomplete credential state from the host: {text[-200:]!r}")
    salt, recorded, present = None, {}, set()
    for line in lines[:-1]:
        word, _, rest = line.partition(" ")
        if word == "salt" and rest != "-":
            salt = bytes.fromhex(rest)
        elif word == "digest" and len(rest.split()) == 2:
            name, hexdigest = rest.split()
            recorded[name] = hexdigest
        elif word == "file":
            present.add(rest)
    return salt, recorded, present


def sync_all(hosts: list[Host], logins: dict[str, connect.Login], wanted: dict[str, dict[str, bytes]],
             dry: bool = False, store: Store = BOT_STORE) -> tuple[dict[str, Delivery], dict[str, str]]:
    """sync_host on every logged-in host in parallel: (deliveries, errors) by host name."""
    todo = [h for h in hosts if h.name in logins]
    deliveries, errors = {}, {}

    def one(h: Host):
        try:
            return h.name, sync_host(h, logins[h.name], wanted.get(h.name, {}), dry, store), None
        except (DeliveryError, OSError, paramiko.SSHException) as e:
            return h.name, None, str(e) if isinstance(e, DeliveryError) else f"{h.name}: credential delivery: {e}"

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(todo)))) as pool:
        for name, delivery, err in pool.map(one, todo):
            if err:
                errors[name] = err
            else:
                deliveries[name] = delivery
    return deliveries, errors
