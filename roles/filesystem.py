"""Filesystem and packages: mount options, no legacy network services, file permissions, no
world-writable files, SUID/SGID bits only where an allow-list says so.

Mounts. `/tmp` and `/var/tmp` are bind-mounted onto themselves with nosuid,nodev(,noexec) — the
same content, so a deploy can apply it live without hiding files — and `/dev/shm`, `/dev` are
remounted with the options linux-baseline os-14/15/16 ask for; `/proc` is remounted with
hidepid=invisible (see PROC_HIDEPID). All five are fstab entries (so a VM applies them at boot,
and `findmnt --verify` checks them before they go live); a container manager mounts `/proc`, `/tmp`,
`/dev`, `/dev/shm` itself before the container's systemd reads fstab, so
`hardkit-mount-options.service` re-applies the fstab options early at every boot (a no-op on a VM).
With noexec `/tmp`, debconf's config scripts would fail to run: apt extracts them elsewhere.

SUID/SGID. Bits are removed with `dpkg-statoverride` (they survive package upgrades) from
programs a server does not need: the baseline's blacklist member ssh-keysign (host-based SSH
auth is off) and chfn/chsh/newgrp/gpasswd. Every other SUID/SGID file must be in
`SUID_SGID_ALLOWED`; a new one fails the check instead of being silently changed.

Usage: ``roles.filesystem.apply()``.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.deb import DebArch
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from roles.data import DataKey, is_bool
from roles.ops import Lines, MappingFact, ensure_modes, install_file, quiet_or_fail, render

TMP_NOEXEC = DataKey(
    "tmp_noexec", True,
    "Mount /tmp and /var/tmp noexec (linux-baseline os-14). Set false only for hosts that must run "
    "programs from temporary directories (some build tools do); nosuid and nodev stay.",
    is_bool)

KEYS = [TMP_NOEXEC]

#: /proc shows each user only their own processes (Lynis FILE-6344; hidepid=2 before Linux 5.8): an
#: account that is broken into cannot read another's command lines, environment sizes or open files,
#: nor even list its processes. root keeps the whole view through CAP_SYS_PTRACE (sudo, the services
#: hardkit's checks and scanners run as), and systemd-logind, which lacks it, only looks up the session
#: processes sshd starts as root. Units that need less already have ProtectProc=invisible.
PROC_HIDEPID = "hidepid=invisible"

FSTAB = "/etc/fstab"
FSTAB_BEGIN = "# BEGIN hardkit mount options (roles/filesystem.py)"
FSTAB_END = "# END hardkit mount options"
MOUNT_UNIT = "hardkit-mount-options.service"
APT_TMP_CONF = "/etc/apt/apt.conf.d/50hardkit-noexec-tmp"
#: Where debconf's config scripts are extracted instead of the noexec /tmp.
APT_EXTRACT_DIR = "/var/lib/hardkit/apt-extract"


def mount_policy(data) -> dict[str, dict]:
    """Each managed mount point: fstab source, type and options; `flags` are what the checks expect."""
    exec_flag = ["noexec"] if TMP_NOEXEC.value(data) else []
    tmp_flags = ["nosuid", "nodev", *exec_flag]
    return {  # parents before children: findmnt --verify and mount want this order
        "/dev": {"source": "udev", "fstype": "devtmpfs", "options": ["nosuid", "noexec", "mode=0755"],
                 "flags": ["nosuid", "noexec"]},
        "/dev/shm": {"source": "tmpfs", "fstype": "tmpfs", "options": ["nosuid", "nodev", "noexec"],
                     "flags": ["nosuid", "nodev", "noexec"]},
        "/tmp": {"source": "/tmp", "fstype": "none", "options": ["bind", *tmp_flags], "flags": tmp_flags},
        "/var/tmp": {"source": "/var/tmp", "fstype": "none", "options": ["bind", *tmp_flags], "flags": tmp_flags},
        "/proc": {"source": "proc", "fstype": "proc", "options": ["nosuid", "nodev", "noexec", PROC_HIDEPID],
                  "flags": [PROC_HIDEPID]},
    }


#: Packages of legacy or clear-text network services (linux-baseline package-01..06, -09 and their
#: Debian names) and their clients.
LEGACY_PACKAGES = [
    "inetutils-inetd", "openbsd-inetd", "rlinetd", "xinetd", "inetd",             # package-01
    "telnetd", "inetutils-telnetd", "telnetd-ssl", "telnet", "inetutils-telnet",   # package-02
    "rsh-server", "rsh-redone-server", "rsh-client", "rsh-redone-client",          # package-03
    "ypserv", "nis",                                                               # package-05
    "tftpd", "tftpd-hpa", "atftpd", "tftp-server", "tftp", "tftp-hpa",             # package-06
    "prelink",                                                                     # package-09
    "talkd", "inetutils-talkd", "talk", "rwho", "rwhod", "finger", "fingerd",
]

#: Owner, group and mode of sensitive files (os-02, os-03, os-11, os-13, identity files, /etc/ssh).
PERMISSIONS = {
    "/etc/passwd": ("root", "root", "0644"), "/etc/passwd-": ("root", "root", "0644"),
    "/etc/group": ("root", "root", "0644"), "/etc/group-": ("root", "root", "0644"),
    "/etc/shadow": ("root", "shadow", "0640"), "/etc/shadow-": ("root", "shadow", "0640"),
    "/etc/gshadow": ("root", "shadow", "0640"), "/etc/gshadow-": ("root", "shadow", "0640"),
    "/etc/ssh": ("root", "root", "0755"),
    "/etc/crontab": ("root", "root", "0600"),
    "/etc/cron.hourly": ("root", "root", "0700"), "/etc/cron.daily": ("root", "root", "0700"),
    "/etc/cron.weekly": ("root", "root", "0700"), "/etc/cron.monthly": ("root", "root", "0700"),
    "/etc/cron.yearly": ("root", "root", "0700"), "/etc/cron.d": ("root", "root", "0700"),
    "/var/log": ("root", "root", "0755"),
    "/etc/login.defs": ("root", "root", "0644"),
}
#: os-13's list: cron files that must be root's and closed to group and others.
CRON_PATHS = ["/etc/crontab", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly",
              "/etc/cron.d"]

#: SUID/SGID bits removed for good (dpkg-statoverride): path -> (owner, group, mode).
SUID_STRIP = {
    "/usr/lib/openssh/ssh-keysign": ("root", "root", "0755"),  # linux-baseline os-06 blacklist
    "/usr/bin/chfn": ("root", "root", "0755"),
    "/usr/bin/chsh": ("root", "root", "0755"),
    "/usr/bin/newgrp": ("root", "root", "0755"),
    "/usr/bin/gpasswd": ("root", "root", "0755"),
}
#: Compilers and assemblers (names looked up on PATH, links resolved): only root may run them (Lynis
#: HRDN-7222), so a compromised service account cannot build exploit code on the host. binutils' `as`
#: stays installed: python3.11 and needrestart depend on it.
COMPILER_NAMES = ["as", "cc", "gcc", "g++", "c++", "clang", "tcc"]
COMPILER_MODE = ("root", "root", "0750")
COMPILERS_COMMAND = ("for c in " + " ".join(COMPILER_NAMES) + "; do p=$(command -v \"$c\") && readlink -f \"$p\"; "
                     "done | sort -u")
#: GNU type of each Debian architecture, for binutils' assembler (/usr/bin/<type>-as). It is registered
#: whether or not binutils is installed yet: a later role of the same deploy pulls binutils in (rkhunter
#: needs its `strings`), and a deploy reads its facts before it runs, so a first deploy would miss it and
#: the second would change. dpkg applies a registered override when the package installs the file.
GNU_TYPES = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "armhf": "arm-linux-gnueabihf",
             "i386": "i686-linux-gnu", "ppc64el": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu"}


def compiler_paths(found: list[str], arch: str) -> set[str]:
    """The compilers found on PATH, plus binutils' assembler for this architecture (see GNU_TYPES)."""
    return set(found) | ({f"/usr/bin/{GNU_TYPES[arch]}-as"} if arch in GNU_TYPES else set())
#: linux-baseline os-06's blacklist (none of these may carry a SUID/SGID bit).
SUID_BLACKLIST = [
    "/usr/bin/rcp", "/usr/bin/rlogin", "/usr/bin/rsh", "/usr/libexec/openssh/ssh-keysign",
    "/usr/lib/openssh/ssh-keysign", "/sbin/netreport", "/usr/sbin/usernetctl", "/usr/sbin/userisdnctl",
    "/usr/sbin/pppd", "/usr/bin/lockfile", "/usr/bin/mail-lock", "/usr/bin/mail-unlock", "/usr/bin/mail-touchlock",
    "/usr/bin/dotlockfile", "/usr/bin/arping", "/usr/sbin/arping", "/usr/sbin/uuidd", "/usr/bin/mtr",
    "/usr/lib/evolution/camel-lock-helper-1.2", "/usr/lib/pt_chown", "/usr/lib/eject/dmcrypt-get-device",
    "/usr/lib/mc/cons.saver",
]
#: Every SUID/SGID file a hardkit host may have (Debian 12 base + what hardkit installs).
SUID_SGID_ALLOWED = {
    "/usr/bin/passwd", "/usr/bin/su", "/usr/bin/mount", "/usr/bin/umount",
    "/usr/bin/sudo",                          # the admin's way to root (issue 3)
    "/usr/bin/crontab",                       # SGID crontab: root only, via cron.allow
    "/usr/bin/chage", "/usr/bin/expiry",      # SGID shadow: read own aging
    "/usr/sbin/unix_chkpwd",                  # SGID shadow: PAM password check
    "/usr/bin/ssh-agent",                     # SGID _ssh
    "/usr/lib/dbus-1.0/dbus-daemon-launch-helper",
    "/usr/bin/wall", "/usr/bin/write.ul", "/usr/bin/bsd-write",  # SGID tty
    "/usr/sbin/pam_extrausers_chkpwd",
    "/usr/sbin/pam-tmpdir-helper",            # SUID root: makes /tmp/user/UID for pam_tmpdir (roles/accounts.py)
}
#: Finds SUID/SGID files on the root file system (and every other local one) for the check.
FIND_SUID_SGID = ("find / -xdev \\( -perm -4000 -o -perm -2000 \\) -type f -print 2>/dev/null; "
                  "for m in /boot /home /var /usr; do mountpoint -q $m && "
                  "find $m -xdev \\( -perm -4000 -o -perm -2000 \\) -type f -print 2>/dev/null; done; true")
#: World-writable files (any) and world-writable directories without the sticky bit, on local file systems.
FIND_WORLD_WRITABLE = (
    "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run \\) -prune -o "
    "\\( -type f -perm -0002 -printf 'file %p\\n' \\) -o "
    "\\( -type d -perm -0002 ! -perm -1000 -printf 'dir %p\\n' \\) 2>/dev/null; true")
#: Both of those in one walk of the file systems, for a deploy (the filesystem role's world-writable
#: paths, the audit role's privileged programs): a walk costs the host about as much CPU as either
#: alone (~0.2 s on the lab). Prints `suid PATH` for each line FIND_SUID_SGID prints, in its order, and
#: each line of FIND_WORLD_WRITABLE as it is (`file PATH`, `dir PATH`): the pruned folders are left out
#: by their paths instead, so the SUID/SGID search still sees into them as FIND_SUID_SGID does.
FIND_MODES = (
    "find / -xdev \\( -type f \\( -perm -4000 -o -perm -2000 \\) -printf 'suid %p\\n' \\) , "
    "\\( ! \\( -path /proc -o -path '/proc/*' -o -path /sys -o -path '/sys/*' -o -path /dev -o -path '/dev/*' "
    "-o -path /run -o -path '/run/*' \\) \\( \\( -type f -perm -0002 -printf 'file %p\\n' \\) -o "
    "\\( -type d -perm -0002 ! -perm -1000 -printf 'dir %p\\n' \\) \\) \\) 2>/dev/null; "
    "for m in /boot /home /var /usr; do mountpoint -q $m && "
    "find $m -xdev \\( -perm -4000 -o -perm -2000 \\) -type f -printf 'suid %p\\n' 2>/dev/null; done; true")


def privileged_programs(lines: list[str]) -> list[str]:
    """FIND_SUID_SGID's lines, from FIND_MODES's."""
    return [line[len("suid "):] for line in lines if line.startswith("suid ")]


def world_writable(lines: list[str]) -> list[str]:
    """FIND_WORLD_WRITABLE's lines, from FIND_MODES's."""
    return [line for line in lines if not line.startswith("suid ")]


def fstab_block(data) -> str:
    return render("os/fstab-block.j2", begin=FSTAB_BEGIN, end=FSTAB_END, mounts=mount_policy(data))


def fstab_with_block(current: list[str], block: str) -> str:
    """The fstab text with hardkit's block replaced (or appended), everything else untouched."""
    kept, inside = [], False
    for line in current:
        if line.strip() == FSTAB_BEGIN:
            inside = True
        elif line.strip() == FSTAB_END:
            inside = False
        elif not inside:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept + ["", block.rstrip("\n")]).lstrip("\n") + "\n"


#: Verifies only hardkit's own block (the provider's root entry may name a device a container lacks);
#: findmnt's warnings (a mount point listed twice...) count as failures.
FSTAB_CHECK = (f"awk -v b={shlex.quote(FSTAB_BEGIN)} -v e={shlex.quote(FSTAB_END)} "
               "'$0==b{f=1} f{print} $0==e{f=0}' {path} > {path}.block && "
               "out=$(findmnt --verify --tab-file {path}.block 2>&1); rc=$?; rm -f {path}.block; echo \"$out\" >&2; "
               "[ $rc -eq 0 ] && echo \"$out\" | grep -q 'no errors or warnings'")


#: Each mount's per-mount flags (nosuid...) and its file system's options (hidepid...), one line a mount.
MOUNT_FLAGS_COMMAND = "findmnt -rn -o TARGET,VFS-OPTIONS,FS-OPTIONS"


def mount_flags(lines: list[str]) -> dict[str, set[str]]:
    """{mount point: its flags and file system options} of the top-most mount at each point."""
    result = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2:
            result[parts[0]] = set(",".join(parts[1:]).split(","))  # later lines are mounted on top
    return result


class MountFlags(MappingFact):
    """Per-mount flags of the top-most mount at each path: ``{"/tmp": {"nosuid", ...}}``."""

    def command(self):
        return MOUNT_FLAGS_COMMAND

    def process(self, output):
        return mount_flags(output)


@operation()
def mount_options(policy: dict[str, dict]):
    """Apply the fstab options of each managed mount point now: mount it if it is not, else remount."""
    current = host.get_fact(MountFlags)
    done = True
    for point, spec in policy.items():
        have = current.get(point)
        if have is not None and set(spec["flags"]) <= have:
            continue
        done = False
        action = "mount" if have is None else "mount -o remount"
        yield f"{action} {shlex.quote(point)}"
    if done:
        host.noop("every managed mount point has its options")


@operation()
def statoverrides(specs: dict[str, tuple[str, str, str]]):
    """Register dpkg stat overrides (owner, group, mode that survive upgrades) and apply them now."""
    listed = host.get_fact(Lines, command="dpkg-statoverride --list")
    have = {}
    for line in listed:
        user, group, mode, path = line.split(None, 3)
        have[path] = (user, group, mode)
    changed = False
    for path, (user, group, mode) in sorted(specs.items()):
        want = (user, group, mode.lstrip("0") or "0")
        if have.get(path) == want:
            continue
        changed = True
        if path in have:
            yield f"dpkg-statoverride --remove {shlex.quote(path)}"
        yield f"dpkg-statoverride --update --add {user} {group} {mode} {shlex.quote(path)}"
    if not changed:
        host.noop("stat overrides are registered")


@operation()
def no_world_writable():
    """Remove write-for-all from files, and add the sticky bit to world-writable directories."""
    found = world_writable(host.get_fact(Lines, command=FIND_MODES))
    if not found:
        host.noop("no world-writable file and no world-writable directory without the sticky bit")
        return
    for line in found:
        kind, path = line.split(" ", 1)
        yield f"chmod {'o-w' if kind == 'file' else '+t'} {shlex.quote(path)}"


@deploy("Filesystem and packages")
def filesystem():
    data = host.data
    apt.packages(name="No legacy network services (telnet, rsh, inetd, NIS, tftp, talk, prelink)",
                 packages=LEGACY_PACKAGES, present=False, extra_uninstall_args="--purge")

    files.directory(name="debconf extraction folder (not the noexec /tmp)", path=APT_EXTRACT_DIR,
                    user="root", group="root", mode="0700")
    install_file(name="apt: extract debconf scripts outside /tmp", dest=APT_TMP_CONF, mode="0644",
                 content=f'// Managed by hardkit: /tmp is noexec, so debconf config scripts run from here.\n'
                         f'APT::ExtractTemplates::TempDir "{APT_EXTRACT_DIR}";\n',
                 validate="apt-config -c {path} dump >/dev/null")

    current = host.get_fact(FileContents, path=FSTAB) or []
    fstab = install_file(name="fstab: mount options for /proc, /tmp, /var/tmp, /dev/shm, /dev", dest=FSTAB, mode="0644",
                         content=fstab_with_block(current, fstab_block(data)), validate=FSTAB_CHECK)
    unit = install_file(name="Unit: re-apply fstab mount options at boot", dest=f"/etc/systemd/system/{MOUNT_UNIT}",
                        mode="0644", content=render("os/hardkit-mount-options.service.j2",
                                                    points=list(mount_policy(data))),
                        validate=quiet_or_fail("systemd-analyze verify {path}"))
    server.shell(name="Reload systemd for the mount units", _if=any_changed(fstab, unit),
                 commands=["systemctl daemon-reload"])
    systemd.service(name="Enable the boot-time mount options unit", service=MOUNT_UNIT, running=True, enabled=True)
    mount_options(name="Apply the mount options now", policy=mount_policy(data))

    ensure_modes(name="Owner and mode of identity, cron, ssh and log paths", specs=PERMISSIONS)
    files.file(name="No hosts.equiv (linux-baseline os-01)", path="/etc/hosts.equiv", present=False)
    statoverrides(name="Remove SUID/SGID bits a server does not need", specs=SUID_STRIP)
    compilers = compiler_paths(host.get_fact(Lines, command=COMPILERS_COMMAND), host.get_fact(DebArch))
    statoverrides(name="Compilers and assemblers: root only", specs={c: COMPILER_MODE for c in compilers})
    no_world_writable(name="No world-writable files, sticky world-writable directories")


apply = filesystem
