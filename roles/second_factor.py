"""Two factors for people, the key alone for automation (see roles/second_factor_data.py).

Comes after the admin role and before the SSH role: the people's accounts, their keys and pam_oath
are in place before the guarded sshd change asks for them. sshd's PAM stack (key, then a TOTP code
from pam_oath; never a password) is part of that guarded change (guarded_files): every login, the
automation account's too, runs its account and session stacks, so a stack that broke them would
lock the deploy out as surely as a bad sshd_config, and is reverted the same way. The TOTP seeds themselves never pass through pyinfra: the runner
streams them over SSH stdin into USERS_FILE (deploy/totp_seeds.py).

sshd cannot tell one key of an account from another in a Match block, so the automation account
(the admin_user) and the people are different accounts: the Match on the automation account's
name *and* the controllers' addresses is the only place where a key alone is enough.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from io import StringIO

from pyinfra.api import StringCommand, deploy, operation
from pyinfra.operations import apt, files, server

from roles.access_data import ADMIN_USER
from roles.admin import NO_SHELL, authorized_keys_text, lock_password
from roles.ops import Lines, render
from roles.second_factor_data import (FIDO2, FIDO2_ALGORITHMS, TOTP_DIGITS, TOTP_WINDOW, automation_networks,
                                      enabled, people, users_with)

#: The root-only file pam_oath reads (and writes: it records the last code used, so none is accepted twice).
USERS_FILE = "/etc/users.oath"
#: pam_oath's line for a TOTP user: 30-second steps, 6 digits, no PIN ("-"), the seed in hex.
USERS_FILE_TOKEN = f"HOTP/T30/{TOTP_DIGITS}"
PAM_SSHD = "/etc/pam.d/sshd"
#: Debian 12 packages: the PAM module and `oathtool` (an operator can compute a code on the host to test).
PACKAGES = ["libpam-oath", "oathtool"]

KEYS: list = []


def pam_sshd_text() -> str:
    return render("ssh/pam-sshd-2fa.j2", users_file=USERS_FILE, window=TOTP_WINDOW, digits=TOTP_DIGITS)


def guarded_files(data) -> dict[str, str]:
    """Files that go live with sshd's configuration, under the guard: the PAM stack, when 2FA is on."""
    return {PAM_SSHD: pam_sshd_text()} if enabled(data) else {}


def pam_validate_command() -> str:
    """The guard's check of the PAM stack staged under `{staged}` before it goes live: every module it
    loads is installed and every file it includes exists (PAM has no validator of its own, and a missing
    module fails every login that reaches it). No other braces: the guard fills `{staged}` with format."""
    return ("f={staged}" + PAM_SSHD + "; [ -e $f ] || exit 0; "
            "for m in $(grep -v '^[[:space:]]*#' $f | grep -o 'pam_[a-z0-9_]*[.]so' | sort -u); do "
            "ok=; for p in /usr/lib/*/security/$m /lib/*/security/$m; do if [ -e \"$p\" ]; then ok=1; fi; done; "
            "if [ -z \"$ok\" ]; then "
            "echo \"" + PAM_SSHD + ": PAM module $m is not installed\" >&2; exit 1; fi; done; "
            "for i in $(sed -n 's/^@include[[:space:]]*//p' $f); do if [ ! -e /etc/pam.d/$i ]; then "
            "echo \"" + PAM_SSHD + ": it includes /etc/pam.d/$i, which does not exist\" >&2; exit 1; fi; done")


def person_keys_text(entry: dict) -> str:
    """A person's authorized_keys; a FIDO2 key is only accepted with the user verified (PIN or fingerprint)."""
    return authorized_keys_text(entry["keys"], "verify-required" if entry.get("second_factor") == FIDO2 else "")


@dataclass(frozen=True)
class MatchRule:
    """One sshd `Match` block: for these users (and, if given, only from these networks), these settings."""
    comment: str
    users: list[str]
    networks: list[str] | None
    overrides: list[tuple[str, str]]

    def applies(self, user: str, addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        return user in self.users and (self.networks is None or any(
            ip in ipaddress.ip_network(n) for n in self.networks))

    def lines(self) -> list[str]:
        criteria = f"User {','.join(self.users)}" + (f" Address {','.join(self.networks)}" if self.networks else "")
        return [f"# {self.comment}", f"Match {criteria}", *[f"    {k} {v}" for k, v in self.overrides], ""]


def match_rules(data) -> list[MatchRule]:
    """sshd's Match blocks, in config order (for a login they match, the first value read wins)."""
    if not enabled(data):
        return []
    rules = [MatchRule("The automation account, from the controllers only: its key alone (deploy and verify "
                       "are unattended).", [ADMIN_USER.value(data)], automation_networks(data),
                       [("AuthenticationMethods", "publickey")])]
    fido2 = users_with(data, FIDO2)
    if fido2:
        rules.append(MatchRule("FIDO2 admins: only security-key keys, and only with the user verified by the key "
                               "(PIN or fingerprint).", fido2, None,
                               [("PubkeyAcceptedAlgorithms", ",".join(FIDO2_ALGORITHMS)),
                                ("PubkeyAuthOptions", "verify-required"), ("AuthenticationMethods", "publickey")]))
    return rules


def sshd_match_blocks(data) -> list[str]:
    """sshd_config lines after the Include: the automation exception and the FIDO2 people's rules."""
    return [line for rule in match_rules(data) for line in rule.lines()]


def login_overrides(data, user: str, addr: str) -> dict[str, str]:
    """What the Match blocks change for a login of `user` from `addr` (first value wins, as in sshd)."""
    out: dict[str, str] = {}
    for rule in match_rules(data):
        if rule.applies(user, addr):
            for key, value in rule.overrides:
                out.setdefault(key, value)
    return out


#: The comment (GECOS) of every person's account: the account database is how a later deploy finds the
#: people it must close once they are no longer listed; nothing else on the host records them.
PERSON_COMMENT = "hardkit person"
#: shadow's expiry field of a closed account: day 1 of 1970, long past.
EXPIRED = "1"


class PersonAccounts(Lines):
    """`name shell expiry keys` of every account hardkit made for a person (PERSON_COMMENT): expiry "-"
    when it has none, keys "yes" while /home/<name>/.ssh/authorized_keys exists."""

    def command(self):
        return ("getent passwd | awk -F: -v c=" + shlex.quote(PERSON_COMMENT) + " '$5 == c {print $1, $7}' | "
                "while read -r name shell; do e=$(getent shadow \"$name\" | cut -d: -f8); k=no; "
                "[ -e \"/home/$name/.ssh/authorized_keys\" ] && k=yes; echo \"$name $shell ${e:--} $k\"; done")


@dataclass(frozen=True)
class PersonAccount:
    shell: str
    expiry: str  # "" when the account never expires
    has_keys: bool


def person_accounts(rows: list[str]) -> dict[str, PersonAccount]:
    """{name: PersonAccount} from PersonAccounts."""
    out = {}
    for row in rows:
        name, shell, expiry, keys = row.split()
        out[name] = PersonAccount(shell, "" if expiry == "-" else expiry, keys == "yes")
    return out


@operation()
def open_account(user: str):
    """
    Lift the expiry of a person's account closed earlier (listed again); nothing when it has none.

    + user: the person
    """
    from pyinfra import host

    account = person_accounts(host.get_fact(PersonAccounts)).get(user)
    if not (account and account.expiry):
        host.noop(f"{user}'s account does not expire")
        return
    yield StringCommand("usermod", "-e", "''", user)


@operation()
def close_account(user: str):
    """
    A person no longer listed: no shell, account expired, keys removed, running sessions ended. The
    home stays, for the record.

    + user: the person
    """
    from pyinfra import host

    account = person_accounts(host.get_fact(PersonAccounts))[user]
    if account.shell == NO_SHELL and account.expiry == EXPIRED and not account.has_keys:
        host.noop(f"{user}'s account is closed")
        return
    yield StringCommand("usermod", "-s", NO_SHELL, "-e", EXPIRED, user)
    yield StringCommand("rm", "-f", f"/home/{user}/.ssh/authorized_keys")
    yield StringCommand("sh", "-c", shlex.quote(f"loginctl terminate-user {user} 2>/dev/null; pkill -KILL -u {user}; "
                                                 "true"))


@deploy("Second factor for people")
def second_factor():
    """The people's accounts and keys, not yet able to log in: the SSH group and sudo come after the
    guarded sshd change asks them for two factors (roles/people_access.py)."""
    from pyinfra import host

    data = host.data
    everyone = people(data)
    for name, entry in sorted(everyone.items()):
        server.user(name=f"Account of {name}", user=name, shell="/bin/bash", home=f"/home/{name}",
                    create_home=True, comment=PERSON_COMMENT)
        open_account(name=f"{name}'s account does not expire", user=name)
        lock_password(name=f"Keep {name}'s password locked (no password login, ever)", user=name)
        files.directory(name=f"{name}'s .ssh", path=f"/home/{name}/.ssh", user=name, group=name, mode="700")
        files.put(name=f"{name}'s authorized keys ({entry['second_factor']})", src=StringIO(person_keys_text(entry)),
                  dest=f"/home/{name}/.ssh/authorized_keys", user=name, group=name, mode="600")
    for name in sorted(set(person_accounts(host.get_fact(PersonAccounts))) - set(everyone)):
        close_account(name=f"Close the account of {name} (no longer in second_factor_admins)", user=name)
    if everyone:
        # Even with FIDO2 people only: keyboard-interactive must never fall through to a password prompt. The
        # PAM stack that asks for the code goes live with sshd's configuration (roles/ssh.py, guarded_files).
        apt.packages(name="Install pam_oath", packages=PACKAGES)


apply = second_factor
