"""A second factor for people, none for automation: the data the 2FA role, sshd, the seed delivery
and the checks share.

People who log in by hand are listed in `second_factor_admins`, each with their own account and a
second factor: a TOTP code (pam_oath) after their key, or a FIDO2 security key that itself verifies
its user, by PIN or fingerprint (`verify-required`; a touch alone is not enough). The `admin_user`
stays the automation account `hardkit deploy` and `verify` log in as: its keys work only from
`automation_from` (`from=` in authorized_keys) and one sshd `Match` block lets that account, from
those addresses only, in with the key alone. When the list is empty (the default) nothing of this
is in force and sshd stays key-only for the admin.
"""

from __future__ import annotations

import ipaddress

from roles.data import DataKey, USERNAME_RE, is_network_list, read_public_key

TOTP, FIDO2 = "totp", "fido2"
METHODS = (TOTP, FIDO2)

#: TOTP as every authenticator app does it (RFC 6238 defaults): 30-second steps, 6 digits, SHA-1.
TOTP_STEP_SECONDS = 30
TOTP_DIGITS = 6
#: Steps accepted either side of now (pam_oath `window=`): one absorbs clock skew of up to 30 s.
TOTP_WINDOW = 1
#: Seed length in bytes (RFC 4226 recommends 160 bits).
TOTP_SEED_BYTES = 20

#: The only key type a FIDO2 admin may log in with, and its certificate form.
FIDO2_ALGORITHMS = ["sk-ssh-ed25519@openssh.com", "sk-ssh-ed25519-cert-v01@openssh.com"]

#: Name of a person's TOTP seed in the host's secrets environment (secrets/<env>/totp-<name>.age).
SEED_PREFIX = "totp-"


#: Accounts a person must never be given (their shell, the SSH group, sudo): Debian's base system accounts
#: (base-passwd) and sshd's; hardkit's own all start with "hardkit", systemd's with "systemd-", and
#: Debian's newer system accounts with "_".
SYSTEM_ACCOUNTS = frozenset({"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
                             "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "sshd", "messagebus",
                             "polkitd", "tss", "ntp", "systemd"})
RESERVED_PREFIXES = ("hardkit", "systemd-", "_")


def reserved(name: str) -> bool:
    return name in SYSTEM_ACCOUNTS or name.startswith(RESERVED_PREFIXES)


def seed_name(user: str) -> str:
    return SEED_PREFIX + user


def _check_admins(v) -> str | None:
    if not isinstance(v, dict):
        return f"must be a dict {{name: {{'second_factor': 'totp'|'fido2', 'keys': [...]}}}}, not {v!r}"
    problems = []
    for name, entry in v.items():
        if not isinstance(name, str) or not USERNAME_RE.match(name):
            problems.append(f"{name!r} is not a valid user name for a person")
            continue
        if reserved(name):
            problems.append(f"{name!r} is a system or hardkit account, not a person's: give the person an account "
                            "of their own")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{name}: must be a dict with 'second_factor' and 'keys', not {entry!r}")
            continue
        unknown = sorted(set(entry) - {"second_factor", "keys"})
        if unknown:
            problems.append(f"{name}: unknown field(s) {', '.join(unknown)} (allowed: second_factor, keys)")
        method = entry.get("second_factor")
        if method not in METHODS:
            problems.append(f"{name}: second_factor must be 'totp' or 'fido2', not {method!r}")
        keys = entry.get("keys")
        if not isinstance(keys, (list, tuple)) or not keys:
            problems.append(f"{name}: keys must be a non-empty list of public keys or .pub paths")
            continue
        for item in keys:
            try:
                line = read_public_key(item)
            except ValueError as e:
                problems.append(f"{name}: {e}")
                continue
            if method == FIDO2 and line.split()[0] != FIDO2_ALGORITHMS[0]:
                problems.append(f"{name}: a fido2 admin's keys must be {FIDO2_ALGORITHMS[0]} "
                                f"(`ssh-keygen -t ed25519-sk -O verify-required`), not {line.split()[0]}")
    return "\n".join(problems) or None


SECOND_FACTOR_ADMINS = DataKey(
    "second_factor_admins", {},
    "People who log in by hand, each with an account of their own (in the SSH group, sudo without a "
    "password) and a second factor: {name: {'second_factor': 'totp' or 'fido2', 'keys': [public keys or "
    ".pub paths]}}. totp: key, then a code from an authenticator app (seed made by `hardkit users add-totp "
    "NAME --env ENV`, stored in secrets_env). fido2: only sk-ssh-ed25519 keys, used with the key's PIN or "
    "fingerprint, a touch alone is not enough (verify-required). Not empty: every login needs two factors, "
    "except the admin_user's (the automation account) from automation_from. Empty (default): sshd stays "
    "key-only.",
    _check_admins)

AUTOMATION_FROM = DataKey(
    "automation_from", None,
    "Addresses/CIDRs the controllers run `hardkit deploy`/`verify` from: the only places the admin_user's "
    "keys work (`from=`) and the only ones where its key alone is enough, when second_factor_admins is set. "
    "Unset: the whole ssh_allow_from. Must lie inside ssh_allow_from and include this controller's address.",
    is_network_list)

KEYS = [SECOND_FACTOR_ADMINS, AUTOMATION_FROM]


def people(data) -> dict[str, dict]:
    return SECOND_FACTOR_ADMINS.value(data) or {}


def enabled(data) -> bool:
    """True when some person is listed: sshd then asks every other login for two factors."""
    return bool(people(data))


def users_with(data, method: str) -> list[str]:
    return sorted(n for n, e in people(data).items() if e.get("second_factor") == method)


def automation_networks(data) -> list[str]:
    """Where the automation key works: automation_from, else the whole SSH allow-list."""
    return list(AUTOMATION_FROM.value(data) or data.get("ssh_allow_from") or [])


def host_problems(data: dict) -> list[str]:
    """How the 2FA keys fit the rest of the host's data."""
    problems = []
    admin = data.get("admin_user")
    names = set(people(data))
    if admin in names or data.get("bootstrap_user") in names:
        problems.append("second_factor_admins must not list the admin_user or bootstrap_user: the admin_user is "
                        "the automation account; people get accounts of their own")
    if users_with(data, TOTP) and not data.get("secrets_env"):
        problems.append("second_factor_admins has totp users but no secrets_env holds their seeds: set "
                        "secrets_env and run `hardkit users add-totp NAME --env ENV`")
    if data.get(AUTOMATION_FROM.name):
        allowed = [ipaddress.ip_network(n) for n in data.get("ssh_allow_from") or []]
        outside = [n for n in AUTOMATION_FROM.value(data)
                   if not any(ipaddress.ip_network(n).subnet_of(a) for a in allowed
                              if a.version == ipaddress.ip_network(n).version)]
        if outside:
            problems.append(f"automation_from {outside} lies outside ssh_allow_from: the firewall would drop it")
    return problems
