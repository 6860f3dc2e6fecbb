"""auditd: dev-sec's auditd.conf settings and a real rule set, optionally immutable until reboot.

Rules (`/etc/audit/rules.d/50-hardkit.rules`, loaded by augenrules): identity files, sudoers, sshd
configuration, PAM and login settings, privileged (SUID/SGID) programs run by a logged-in user,
privilege escalation, time changes, kernel module loads, mounts, permission changes, denied file
access, cron, systemd units, kernel parameters, the firewall, apt sources, hardkit's own state,
the audit configuration itself, and the bot's configuration and credentials (inventory).

Immutable (`-e 2`, inventory `audit_immutable`): once loaded, rules cannot change until reboot.
A deploy that changes rules on such a host leaves them for the next boot and marks a reboot as
required (`/run/reboot-required`), which the reboot guard then handles in its window.

A container cannot run auditd (no audit netlink socket): a drop-in adds
`ConditionVirtualization=!container`, so the unit is skipped there instead of failing, the role
still converges, and the checks skip with that reason.

Usage: ``roles.audit.apply()``.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import apt, server, systemd
from pyinfra.operations.util import any_changed

from roles.data import DataKey, is_bool
from roles.filesystem import FIND_MODES, privileged_programs
from roles.ops import Lines, install_commands, install_file, render


def _is_abs_paths(v):
    ok = isinstance(v, list) and all(isinstance(p, str) and p.startswith("/") and " " not in p for p in v)
    return None if ok else f"must be a list of absolute paths without spaces, not {v!r}"


AUDIT_IMMUTABLE = DataKey(
    "audit_immutable", False,
    "Make the audit rules immutable after boot (-e 2): nobody, root included, can change or stop them until "
    "the next reboot; a deploy that changes rules schedules a reboot through the guard.",
    is_bool)
BOT_CONFIG_PATHS = DataKey(
    "audit_bot_config_paths", ["/etc/hardkit-bot/"],
    "The bot's configuration (files, or folders with a trailing /): every write is audited (key bot-config).",
    _is_abs_paths)
BOT_CREDENTIAL_PATHS = DataKey(
    "audit_bot_credential_paths", ["/etc/credstore.encrypted/", "/etc/credstore/"],
    "The bot's credentials: every read and write is audited (key bot-credentials).", _is_abs_paths)

KEYS = [AUDIT_IMMUTABLE, BOT_CONFIG_PATHS, BOT_CREDENTIAL_PATHS]

AUDITD_CONF = "/etc/audit/auditd.conf"
RULES_FILE = "/etc/audit/rules.d/50-hardkit.rules"
#: The last rule: enable auditing (-e 1), or enable and lock it until reboot (-e 2). Without it the
#: kernel stays at "enabled 0" unless booted with audit=1 (auditd does not enable it by itself).
ENABLE_FILE = "/etc/audit/rules.d/99-hardkit-enable.rules"
CONTAINER_DROPIN = "/etc/systemd/system/auditd.service.d/hardkit-container.conf"
GRUB_DEFAULTS = "/etc/default/grub"
GRUB_DROPIN = "/etc/default/grub.d/60-hardkit-audit.cfg"
#: Kernel command line: audit processes started before auditd, with room for the boot's events.
BOOT_PARAMETERS = ["audit=1", "audit_backlog_limit=8192"]

#: dev-sec linux-baseline package-08 (and Debian's defaults for the rest).
AUDITD_SETTINGS = {
    "local_events": "yes", "write_logs": "yes",
    "log_file": "/var/log/audit/audit.log", "log_group": "adm", "log_format": "RAW",
    "flush": "INCREMENTAL_ASYNC", "freq": "50", "max_log_file": "8", "num_logs": "5",
    "priority_boost": "4", "name_format": "NONE",
    "max_log_file_action": "KEEP_LOGS",
    "space_left": "75", "space_left_action": "SYSLOG", "verify_email": "yes", "action_mail_acct": "root",
    "admin_space_left": "50", "admin_space_left_action": "SUSPEND",
    "disk_full_action": "SUSPEND", "disk_error_action": "SUSPEND",
    "use_libwrap": "yes", "tcp_listen_queue": "5", "tcp_max_per_addr": "1", "tcp_client_max_idle": "0",
    "transport": "TCP", "krb5_principal": "auditd", "distribute_network": "no",
    "q_depth": "2000", "overflow_action": "SYSLOG", "max_restarts": "10",
    "plugin_dir": "/etc/audit/plugins.d", "end_of_event_timeout": "2",
}
#: What linux-baseline package-08 compares (case-insensitively), from AUDITD_SETTINGS.
BASELINE_AUDITD_KEYS = ["log_file", "log_format", "flush", "max_log_file_action", "space_left", "action_mail_acct",
                        "space_left_action", "admin_space_left", "admin_space_left_action", "disk_full_action",
                        "disk_error_action"]

USER = "-F auid>=1000 -F auid!=unset"
#: Watches: key -> [(path, permissions)].
WATCHES = {
    "identity": [("/etc/passwd", "wa"), ("/etc/group", "wa"), ("/etc/shadow", "wa"), ("/etc/gshadow", "wa"),
                 ("/etc/security/opasswd", "wa")],
    "sudoers": [("/etc/sudoers", "wa"), ("/etc/sudoers.d/", "wa")],
    "sshd": [("/etc/ssh/sshd_config", "wa"), ("/etc/ssh/sshd_config.d/", "wa")],
    "pam": [("/etc/pam.d/", "wa"), ("/etc/security/", "wa"), ("/etc/login.defs", "wa")],
    "logins": [("/var/log/lastlog", "wa"), ("/var/run/faillock/", "wa")],
    "session": [("/var/run/utmp", "wa"), ("/var/log/wtmp", "wa"), ("/var/log/btmp", "wa")],
    "time-change": [("/etc/localtime", "wa")],
    "modules": [("/usr/bin/kmod", "x"), ("/usr/sbin/insmod", "x"), ("/usr/sbin/rmmod", "x"),
                ("/usr/sbin/modprobe", "x"), ("/etc/modprobe.d/", "wa")],
    "sysctl": [("/etc/sysctl.conf", "wa"), ("/etc/sysctl.d/", "wa")],
    "cron": [("/etc/crontab", "wa"), ("/etc/cron.d/", "wa"), ("/etc/cron.allow", "wa"), ("/var/spool/cron/", "wa")],
    "systemd": [("/etc/systemd/", "wa")],
    "firewall": [("/etc/nftables.conf", "wa"), ("/etc/fail2ban/", "wa")],
    "network": [("/etc/hosts", "wa"), ("/etc/hostname", "wa"), ("/etc/resolv.conf", "wa"), ("/etc/systemd/network/", "wa")],
    "apt": [("/etc/apt/", "wa")],
    "hardkit": [("/etc/hardkit/", "wa")],
    "audit-config": [("/etc/audit/", "wa")],
}
#: Syscall rules: key -> rules (both ABIs where a 32-bit program could do the same).
SYSCALLS = {
    "time-change": ["-a always,exit -F arch=b64 -S adjtimex,settimeofday,clock_settime",
                    "-a always,exit -F arch=b32 -S adjtimex,settimeofday,clock_settime,stime"],
    "modules": ["-a always,exit -F arch=b64 -S init_module,finit_module,delete_module",
                "-a always,exit -F arch=b32 -S init_module,finit_module,delete_module"],
    "privilege-escalation": ["-a always,exit -F arch=b64 -S execve -C uid!=euid -F euid=0",
                             "-a always,exit -F arch=b32 -S execve -C uid!=euid -F euid=0"],
    "network": ["-a always,exit -F arch=b64 -S sethostname,setdomainname",
                "-a always,exit -F arch=b32 -S sethostname,setdomainname"],
    "mounts": [f"-a always,exit -F arch=b64 -S mount,umount2 {USER}", f"-a always,exit -F arch=b32 -S mount,umount2 {USER}"],
    "perm-mod": [f"-a always,exit -F arch=b64 -S chmod,fchmod,fchmodat {USER}",
                 f"-a always,exit -F arch=b64 -S chown,fchown,fchownat,lchown {USER}",
                 f"-a always,exit -F arch=b64 -S setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr {USER}"],
    "access": [f"-a always,exit -F arch=b64 -S open,openat,creat,truncate,ftruncate -F exit=-EACCES {USER}",
               f"-a always,exit -F arch=b64 -S open,openat,creat,truncate,ftruncate -F exit=-EPERM {USER}"],
}
PRIVILEGED_KEY = "privileged"


def bot_watches(data) -> dict[str, list[tuple[str, str]]]:
    return {"bot-config": [(p, "wa") for p in BOT_CONFIG_PATHS.value(data)],
            "bot-credentials": [(p, "rwa") for p in BOT_CREDENTIAL_PATHS.value(data)]}


def rules_text(data, privileged: list[str]) -> str:
    """The rule file for this host; `privileged` are the SUID/SGID programs found on it."""
    watches = {**WATCHES, **bot_watches(data)}
    return render("os/audit.rules.j2", watches=watches, syscalls=SYSCALLS, privileged=sorted(set(privileged)),
                  privileged_key=PRIVILEGED_KEY, user=USER)


def expected_rule_counts(data, privileged: list[str]) -> dict[str, int]:
    """How many loaded rules (auditctl -l) each key must have."""
    counts = {key: len(paths) for key, paths in {**WATCHES, **bot_watches(data)}.items()}
    for key, rules in SYSCALLS.items():
        counts[key] = counts.get(key, 0) + len(rules)
    counts[PRIVILEGED_KEY] = len(set(privileged))
    return counts


@operation()
def audit_rules(data):
    """Write the rule file (privileged programs found at run time), then load it unless locked."""
    privileged = privileged_programs(host.get_fact(Lines, command=FIND_MODES))  # one walk with filesystem's
    commands = list(install_commands(rules_text(data, privileged), RULES_FILE, "0640"))
    immutable = AUDIT_IMMUTABLE.value(data)
    enable = ("## Managed by hardkit: enable auditing and lock the rules until the next boot.\n-e 2\n" if immutable
              else "## Managed by hardkit: enable auditing.\n-e 1\n")
    commands += list(install_commands(enable, ENABLE_FILE, "0640"))
    if not commands:
        host.noop("audit rules are up to date")
        return
    yield from commands
    # Load now where the kernel lets us; a locked rule set waits for the reboot the guard will do.
    yield ("if systemd-detect-virt --container --quiet; then :; "
           "elif auditctl -s | grep -q '^enabled 2'; then "
           "echo 'audit rules are immutable until reboot: new rules load at the next boot' >&2; "
           "echo auditd-rules >> /run/reboot-required.pkgs; touch /run/reboot-required; "
           "else augenrules --load && auditctl -s | grep -q '^enabled [12]' || "
           "{ echo 'hardkit: audit rules did not load (auditctl -s: not enabled)' >&2; exit 1; }; fi")


@deploy("auditd")
def audit():
    data = host.data
    dropin = install_file(name="auditd: skipped in a container (it cannot run there)", dest=CONTAINER_DROPIN,
                          mode="0644", content="# Managed by hardkit: no audit netlink socket in a container.\n"
                                               "[Unit]\nConditionVirtualization=!container\n")
    server.shell(name="Reload systemd for the auditd drop-in", _if=dropin.did_change,
                 commands=["systemctl daemon-reload"])
    apt.packages(name="Install auditd", packages=["auditd"])
    conf = install_file(name="auditd.conf (linux-baseline package-08)", dest=AUDITD_CONF, mode="0640",
                        content=render("os/auditd.conf.j2", settings=AUDITD_SETTINGS))
    systemd.service(name="auditd runs (skipped in a container)", service="auditd.service", running=None, enabled=True)
    # Before the rules: on a fresh host, a SIGHUP after loading left the kernel at "enabled 0" (vm tier).
    server.shell(name="auditd re-reads a changed auditd.conf (SIGHUP; it refuses manual restarts)", _if=conf.did_change,
                 commands=["systemd-detect-virt --container --quiet || systemctl kill --signal=HUP auditd.service"])
    audit_rules(name="Audit rules (and load them)", data=data)

    grub = host.get_fact(Lines, command=f"test -f {GRUB_DEFAULTS} && echo grub || true")
    if grub:
        boot = install_file(name="Kernel command line: audit from boot", dest=GRUB_DROPIN, mode="0644",
                            content=render("os/grub-audit.cfg.j2", parameters=" ".join(BOOT_PARAMETERS)))
        server.shell(name="Update the boot loader", _if=any_changed(boot), commands=["update-grub"])


apply = audit
