"""TOTP seeds: made on the controller, kept age-encrypted with the other secrets, delivered to pam_oath.

A seed is stored as `secrets/<env>/totp-<user>.age` (its base32 text, what authenticator apps use).
It reaches the host the way the bot's credentials do (deploy/credentials.py: decrypted in the
controller's memory, written to the SSH channel's stdin, keyed digests so an unchanged seed is not
sent again), here into the root-only USERS_FILE that pam_oath reads. Only the user's own line is
replaced, so pam_oath's record of the last code used survives every deploy that does not change it.
"""

from __future__ import annotations

import base64
import secrets
from urllib.parse import quote, urlencode

from deploy.credentials import Store
from deploy.inventory import Host
from deploy.secrets_store import SecretsError
from roles.bot_paths import DEPLOY_RECORD_DIR
from roles.second_factor import USERS_FILE, USERS_FILE_TOKEN
from roles.second_factor_data import (SEED_PREFIX, TOTP, TOTP_DIGITS, TOTP_SEED_BYTES, TOTP_STEP_SECONDS, seed_name,
                                      users_with)
from roles.secrets_data import SECRETS_ENV


def new_seed() -> str:
    """A fresh random seed as unpadded base32 (what otpauth:// URIs and authenticator apps take)."""
    return base64.b32encode(secrets.token_bytes(TOTP_SEED_BYTES)).decode().rstrip("=")


def seed_bytes(text: str) -> bytes:
    """The seed's bytes from its base32 text (case, spaces and missing padding tolerated)."""
    clean = text.strip().replace(" ", "").upper()
    return base64.b32decode(clean + "=" * (-len(clean) % 8))


def otpauth_uri(user: str, seed: str, issuer: str) -> str:
    """The key-uri format authenticator apps scan (github.com/google/google-authenticator/wiki/Key-Uri-Format)."""
    params = {"secret": seed, "issuer": issuer, "algorithm": "SHA1", "digits": TOTP_DIGITS,
              "period": TOTP_STEP_SECONDS}
    return f"otpauth://totp/{quote(issuer)}:{quote(user)}?{urlencode(params)}"


def wanted_seeds(hosts: list[Host], values: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """{host: {totp-<user>: seed as hex}} for every TOTP admin of every host, from the decrypted
    environments (credentials.wanted_values). SecretsError lists every missing or broken seed at once."""
    wanted, problems = {}, []
    for h in hosts:
        wanted[h.name] = {}
        for user in users_with(h.data, TOTP):
            name = seed_name(user)
            env = h.get(SECRETS_ENV)
            if name not in values.get(h.name, {}):
                problems.append(f"{h.name}: no TOTP seed for {user} in secrets_env {env!r}: run "
                                f"`hardkit users add-totp {user} --env {env}`")
                continue
            try:
                wanted[h.name][name] = seed_bytes(values[h.name][name].decode()).hex().encode()
            except (ValueError, UnicodeDecodeError):
                problems.append(f"{h.name}: secrets/{env}/{name}.age is not a base32 TOTP seed: run "
                                f"`hardkit users add-totp {user} --env {env} --replace`")
    if problems:
        raise SecretsError("\n".join(sorted(set(problems))))
    return wanted


def _user(name: str) -> str:
    return name[len(SEED_PREFIX):]  # a validated user name (roles.second_factor_data), safe in a shell word


#: pam_oath rewrites USERS_FILE at every login from the copy it opened *before* it takes its lock
#: (liboath's usersfile.c: parse, then lock, write `.new`, rename), so a login in flight while we
#: replace the file can put the old line back a moment later. Each write is therefore checked again
#: after this pause and redone, at most REWRITE_TRIES times; pam_oath's window is milliseconds.
REWRITE_PAUSE_SECONDS = 1
REWRITE_TRIES = 5


def _rewrite(name: str, path: str, emit: str, holds: str) -> str:
    """Replace `path` with its lines but the user's, then `emit` (shell printing the user's new line, if
    any); done again until `holds` (a test of `$got`, the seed field of the user's line now) is true."""
    user = _user(name)
    return (f"umask 077; f={path}; "
            f"for try in $(seq {REWRITE_TRIES}); do "
            f"{{ if [ -f $f ]; then awk -v u={user} '$2 != u' $f; fi; {emit} }} > $f.tmp "
            f"&& chmod 600 $f.tmp && mv -f $f.tmp $f || exit 1; sleep {REWRITE_PAUSE_SECONDS}; "
            f"got=$(awk -v u={user} '$2 == u {{print $4}}' $f); if {holds}; then exit 0; fi; done; "
            f"echo \"{path}: {user}'s line was put back by concurrent logins {REWRITE_TRIES} times\" >&2; exit 1")


def _write(name: str, path: str = USERS_FILE) -> str:
    """Replace the user's line of `path` with one holding the hex seed read from stdin (the seed stays in
    the shell: `read`, `printf` and `[` are builtins, so it is on no command line)."""
    return ("IFS= read -r seed; [ -n \"$seed\" ] || exit 1; " +
            _rewrite(name, path, f"printf '%s\\t%s\\t-\\t%s\\n' {USERS_FILE_TOKEN} {_user(name)} \"$seed\";",
                     '[ "$got" = "$seed" ]'))


def _remove(name: str, path: str = USERS_FILE) -> str:
    return f"[ -f {path} ] || exit 0; " + _rewrite(name, path, "true;", '[ -z "$got" ]')


#: The TOTP seeds: lines of pam_oath's users file (the value sent is the seed in hex, with a newline).
STORE = Store(
    digests_file=f"{DEPLOY_RECORD_DIR}/totp.digests",
    held=f"if [ -f {USERS_FILE} ]; then awk 'NF >= 4 {{print \"{SEED_PREFIX}\" $2}}' {USERS_FILE}; fi",
    write=_write,
    remove=_remove)
