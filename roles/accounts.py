"""Accounts and login: login.defs, umask, password hashing, no empty passwords, faillock that
cannot lock out key-based admin access, `su` for no one but root, cron/at for root only, a private
temporary folder for every session (pam_tmpdir).

Why the admin can never be locked out by this role:
- pam_faillock counts *password* failures in the PAM auth stack. A public-key SSH login never runs
  that stack (sshd authenticates the key itself and runs only PAM account/session), and neither does
  `sudo -n` with NOPASSWD; the account-stack pam_faillock only resets the counter. root is never
  locked (no `even_deny_root`). With second_factor_admins, a person's wrong TOTP codes do count (sshd's
  auth stack asks for the code after the key): that person, not the automation account, can be locked.
- Password aging (PASS_MAX_DAYS 60) would expire the *password* of a key-only account after 60 days,
  and pam_unix's account check then demands a password change that a non-interactive SSH session
  cannot do ("Password change required but no TTY available"). So every login account without a
  usable password gets no maximum age: aging applies to passwords that exist.
- Profiles go through pam-auth-update (Debian's way), never hand-edited common-* files, so a
  later libpam upgrade keeps them; the role refuses to go on if pam-auth-update could not write them.

Usage: ``roles.accounts.apply()``.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import apt, files, server

from roles.data import DataKey, is_username
from roles.ops import Lines, install_file, render


def _is_user_list(v):
    if not isinstance(v, list):
        return f"must be a list of user names, not {v!r}"
    return "; ".join(filter(None, (is_username(u) for u in v))) or None


def _is_int_between(lo, hi):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"must be an integer between {lo} and {hi}, not {v!r}"
    return check


SU_USERS = DataKey(
    "su_users", [],
    "Users allowed to run `su` (members of SU_GROUP). Empty by default: root may su, everyone else uses sudo, "
    "which logs who did what.",
    _is_user_list)
FAILLOCK_DENY = DataKey(
    "faillock_deny", 5,
    "Password failures (within faillock_interval_seconds) that lock an account's *password* logins. Key-based "
    "SSH and NOPASSWD sudo are not affected; root is never locked. A person's wrong TOTP codes "
    "(second_factor_admins) count too and lock that person's logins.",
    _is_int_between(3, 20))
FAILLOCK_UNLOCK_SECONDS = DataKey(
    "faillock_unlock_seconds", 900,
    "How long a locked account stays locked (0 = until an admin runs `faillock --reset`).",
    _is_int_between(0, 86400))
FAILLOCK_INTERVAL_SECONDS = DataKey(
    "faillock_interval_seconds", 900, "The window in which failures count.", _is_int_between(60, 86400))

def _is_banner(v):
    ok = isinstance(v, str) and v.strip() and "\\" not in v and len(v) <= 2000
    return None if ok else "must be non-empty text of at most 2000 characters without backslashes (getty escapes)"


LOGIN_BANNER = DataKey(
    "login_banner",
    "Authorized access only. This system is private and restricted to its owner's authorized users. "
    "All activity is monitored and recorded in audit logs; by continuing you consent to this policy. "
    "Unauthorized use is prohibited and may be subject to criminal and civil penalties under applicable law.",
    "The warning in /etc/issue and /etc/issue.net, shown before a console or network login: it "
    "says who owns the host and that use is monitored, which prosecuting an intrusion needs. "
    "It never names the OS or its version.",
    _is_banner)
SHELL_IDLE_SECONDS = DataKey(
    "shell_idle_timeout_seconds", 900,
    "An interactive shell idle this long exits (readonly TMOUT), so a forgotten root shell does not stay "
    "open (CIS 5.4.3.2). Scripts and automation (non-interactive) are not affected.",
    _is_int_between(60, 86400))

KEYS = [SU_USERS, FAILLOCK_DENY, FAILLOCK_UNLOCK_SECONDS, FAILLOCK_INTERVAL_SECONDS, LOGIN_BANNER, SHELL_IDLE_SECONDS]

BANNER_FILES = ["/etc/issue", "/etc/issue.net"]
SHELL_PROFILE = "/etc/profile.d/hardkit-session.sh"
#: Password quality for any password set (pam-auth-update enables its profile): a password is never
#: how an admin logs in over SSH, but it is for sudo with a password and the console.
PWQUALITY_PACKAGE = "libpam-pwquality"
PWQUALITY_FRAGMENT = "pam_pwquality.so"

LOGIN_DEFS_FILE = "/etc/login.defs"
#: login.defs values: linux-baseline os-05 (and os-05b's system ranges, with Debian's values),
#: plus hashing: yescrypt (what Debian's pam_unix uses) at a higher cost, SHA rounds for tools
#: configured to use SHA-512.
LOGIN_DEFS = {
    "UMASK": "027",
    "HOME_MODE": "0750",
    "PASS_MAX_DAYS": "60",
    "PASS_MIN_DAYS": "7",
    "PASS_WARN_AGE": "7",
    "LOGIN_RETRIES": "5",
    "LOGIN_TIMEOUT": "60",
    "UID_MIN": "1000", "UID_MAX": "60000",
    "GID_MIN": "1000", "GID_MAX": "60000",
    "SYS_UID_MIN": "100", "SYS_UID_MAX": "999",
    "SYS_GID_MIN": "100", "SYS_GID_MAX": "999",
    "ENV_SUPATH": "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV_PATH": "PATH=/usr/local/bin:/usr/bin:/bin",
    "ENCRYPT_METHOD": "YESCRYPT",
    "YESCRYPT_COST_FACTOR": "8",
    "SHA_CRYPT_MIN_ROUNDS": "640000",
    "SHA_CRYPT_MAX_ROUNDS": "1280000",
    "FAILLOG_ENAB": "yes",
    "LOG_UNKFAIL_ENAB": "no",
    "LOG_OK_LOGINS": "yes",
    "SYSLOG_SU_ENAB": "yes",
    "SYSLOG_SG_ENAB": "yes",
    "DEFAULT_HOME": "no",
}

SU_GROUP = "hardkit-su"
PAM_SU_FILE = "/etc/pam.d/su"
FAILLOCK_CONF = "/etc/security/faillock.conf"
PAM_CONFIGS = "/usr/share/pam-configs"
#: pam-auth-update profiles hardkit adds (name -> template). Priority places preauth before pam_unix.
PAM_PROFILES = {
    "hardkit-faillock-preauth": "os/pam-config-faillock-preauth.j2",
    "hardkit-faillock": "os/pam-config-faillock.j2",
    "hardkit-umask": "os/pam-config-umask.j2",
}
#: The lines pam-auth-update must have put in force (stack file -> fragments).
PAM_EXPECTED = {
    "common-auth": ["pam_faillock.so preauth", "pam_faillock.so authfail"],
    "common-account": ["pam_faillock.so"],
    "common-session": ["pam_umask.so"],
}
#: What installing PWQUALITY_PACKAGE must have put in force.
PWQUALITY_EXPECTED = {"common-password": [PWQUALITY_FRAGMENT]}
#: A private temporary folder for every PAM session (Lynis DEB-0280): pam_tmpdir sets TMPDIR and TMP
#: to /tmp/user/UID (0700, made by its SUID helper), so one account's temporary files cannot be read,
#: guessed or pre-planted as links by another (every login, su, sudo and cron session). Its
#: pam-auth-update profile is on by default; services have no PAM session (their units keep PrivateTmp).
#: pyinfra's uploads stage in /tmp regardless (deploy/site.py).
TMPDIR_PACKAGE = "libpam-tmpdir"
TMPDIR_FRAGMENT = "pam_tmpdir.so"
TMPDIR_EXPECTED = {"common-session": [TMPDIR_FRAGMENT], "common-session-noninteractive": [TMPDIR_FRAGMENT]}
#: The parent of every session's folder, as pam_tmpdir makes it (others may pass, not list).
TMPDIR_PARENT = "/tmp/user"
CRON_ALLOW = "/etc/cron.allow"
AT_ALLOW = "/etc/at.allow"
#: (file, group) - crontab and at run SGID and must read their allow file.
ALLOW_FILES = {CRON_ALLOW: "crontab", AT_ALLOW: "daemon"}
DENY_FILES = ["/etc/cron.deny", "/etc/at.deny"]
#: Accounts with these shells cannot log in (aging and empty-password rules skip them).
NOLOGIN_SHELLS = {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sync"}

#: name:hash:max:shell for every account (one fact for the aging and empty-password rules).
ACCOUNTS_COMMAND = ("awk -F: 'NR==FNR {shell[$1]=$7; next} {print $1 \":\" substr($2,1,1) \":\" ($2==\"\" ? \"EMPTY\" : \"set\") "
                    "\":\" $5 \":\" shell[$1]}' /etc/passwd /etc/shadow")


def parse_accounts(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        name, first, state, max_days, shell = line.split(":", 4)
        out.append({"name": name, "usable_password": state != "EMPTY" and first not in ("!", "*"),
                    "empty": state == "EMPTY", "max_days": max_days, "shell": shell})
    return out


def can_log_in(account: dict) -> bool:
    return account["shell"] not in NOLOGIN_SHELLS and account["shell"] != ""


@operation()
def password_policy_fits_keys():
    """Lock empty passwords; no password maximum age for login accounts that have no usable password."""
    accounts = parse_accounts(host.get_fact(Lines, command=ACCOUNTS_COMMAND))
    changed = False
    for acct in accounts:
        if acct["empty"]:
            changed = True
            yield f"usermod -p '!' {shlex.quote(acct['name'])}"  # locked: an empty password is never a login
        elif can_log_in(acct) and not acct["usable_password"] and acct["max_days"] not in ("", "-1"):
            changed = True
            yield f"chage -M -1 {shlex.quote(acct['name'])}"
    if not changed:
        host.noop("no empty password; key-only accounts have no password expiry")


#: name:uid:home:shell of every account (home folder rule).
HOMES_COMMAND = ("awk -F: '$3 >= 1000 && $3 < 60000 {print $1 \":\" $6 \":\" $7}' /etc/passwd | "
                 "while IFS=: read -r n h s; do [ -d \"$h\" ] && echo \"$n:$h:$s:$(stat -c %a \"$h\")\"; done; true")
HOME_MODE_MAX = 0o750


def open_homes(lines: list[str]) -> list[str]:
    """Home folders of login accounts that group or others may write to or others may enter."""
    found = []
    for line in lines:
        name, home, shell, mode = line.rsplit(":", 3)
        if shell not in NOLOGIN_SHELLS and int(mode, 8) & ~HOME_MODE_MAX & 0o777:
            found.append(home)
    return found


@operation()
def private_homes():
    """Home folders of login accounts: 0750 at most (login.defs HOME_MODE covers new ones)."""
    homes = open_homes(host.get_fact(Lines, command=HOMES_COMMAND))
    if not homes:
        host.noop("home folders are private")
        return
    for home in homes:
        yield f"chmod g-w,o-rwx {shlex.quote(home)}"


@operation()
def group_members(group: str, members: list[str]):
    """Exactly these members in a (supplementary) group."""
    line = host.get_fact(Lines, command=f"getent group {shlex.quote(group)} || true")
    have = set(filter(None, line[0].split(":")[3].split(","))) if line else set()
    if have == set(members):
        host.noop(f"group {group} has its members")
        return
    yield f"gpasswd -M {shlex.quote(','.join(sorted(members)))} {shlex.quote(group)}"


@deploy("Accounts and login")
def accounts():
    data = host.data
    install_file(name="login.defs (linux-baseline os-05)", dest=LOGIN_DEFS_FILE, mode="0644",
                 content=render("os/login.defs.j2", values=LOGIN_DEFS))

    install_file(name="faillock policy", dest=FAILLOCK_CONF, mode="0644",
                 content=render("os/faillock.conf.j2", deny=FAILLOCK_DENY.value(data),
                                unlock=FAILLOCK_UNLOCK_SECONDS.value(data),
                                interval=FAILLOCK_INTERVAL_SECONDS.value(data)))
    profiles = [install_file(name=f"pam-auth-update profile {name}", dest=f"{PAM_CONFIGS}/{name}", mode="0644",
                             content=render(template)) for name, template in PAM_PROFILES.items()]
    in_force = host.get_fact(Lines, command="grep -h -E 'pam_faillock|pam_umask' "
                             + " ".join(f"/etc/pam.d/{f}" for f in PAM_EXPECTED) + " 2>/dev/null || true")
    missing = any(not any(frag in line for line in in_force) for frags in PAM_EXPECTED.values() for frag in frags)
    checks = " && ".join(f"grep -q '{frag}' /etc/pam.d/{stack}" for stack, frags in PAM_EXPECTED.items()
                         for frag in frags)
    server.shell(
        name="Enable the PAM profiles (pam-auth-update)",
        _if=lambda: missing or any(p.did_change() for p in profiles),
        commands=[f"DEBIAN_FRONTEND=noninteractive pam-auth-update --enable {' '.join(PAM_PROFILES)}",
                  f"if ! ( {checks} ); then echo 'hardkit: pam-auth-update did not enable the profiles "
                  f"(locally modified /etc/pam.d/common-*?)' >&2; exit 1; fi"])

    server.group(name=f"Group allowed to su: {SU_GROUP}", group=SU_GROUP, system=True)
    group_members(name="Members of the su group", group=SU_GROUP, members=SU_USERS.value(data))
    install_file(name="su: only root and the su group (pam_wheel)", dest=PAM_SU_FILE, mode="0644",
                 content=render("os/pam-su.j2", group=SU_GROUP))

    for path, group in ALLOW_FILES.items():
        install_file(name=f"{path}: root only", dest=path, mode="0640", group=group,
                     content="# Managed by hardkit: only root may use this scheduler.\nroot\n")
    for path in DENY_FILES:
        files.file(name=f"No {path} (the allow file decides)", path=path, present=False)

    password_policy_fits_keys(name="No empty passwords; key-only accounts never expire")
    private_homes(name="Home folders 0750 at most")

    banner = LOGIN_BANNER.value(data).strip() + "\n"
    for path in BANNER_FILES:
        install_file(name=f"{path}: the legal warning", dest=path, mode="0644", content=banner)
    install_file(name="Idle interactive shells exit; no core dumps from login shells", dest=SHELL_PROFILE,
                 mode="0644", content=render("os/profile-session.sh.j2", timeout=SHELL_IDLE_SECONDS.value(data)))
    apt.packages(name="Password quality for any password set (pam_pwquality)", packages=[PWQUALITY_PACKAGE])
    apt.packages(name="A private temporary folder for every session (pam_tmpdir)", packages=[TMPDIR_PACKAGE])


apply = accounts
