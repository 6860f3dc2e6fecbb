"""Process accounting: the kernel records every process that ends (command, user, terminal, start,
CPU and elapsed time) in /var/log/account/pacct, readable with `lastcomm` and `sa` (Debian's `acct`).

What it adds to the journal and the audit log: a record of short-lived commands an intruder ran,
with their user, even where auditd cannot run (a container) or when no audit rule matched them.
Debian's package rotates the file daily (root:adm 0640).

The kernel accounts only for a process holding CAP_SYS_PACCT. Some container managers keep it from
their containers (systemd-nspawn does; a VM's systemd has it): there `accton` fails, so the package is
left out rather than installed as a failed unit with an empty pacct file that would look like a
record (Lynis ACCT-9622 counts the file). The deploy decides from the capability bounding set it
finds, not from what the inventory says the host is.

Usage: ``roles.accounting.apply()``.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, server, systemd

from roles.ops import Lines

PACKAGE = "acct"
SERVICE = "acct.service"
PACCT_FILE = "/var/log/account/pacct"
#: Prints "yes" when the service manager's capability bounding set holds CAP_SYS_PACCT (bit 20).
CAN_ACCOUNT_COMMAND = ("cap=$(awk '/^CapBnd/ {print $2}' /proc/1/status); "
                       "[ \"$(( 0x$cap >> 20 & 1 ))\" = 1 ] && echo yes || true")


@deploy("Process accounting")
def accounting():
    if host.get_fact(Lines, command=CAN_ACCOUNT_COMMAND):
        apt.packages(name="Process accounting (acct)", packages=[PACKAGE])
        systemd.service(name="Process accounting on, now and at boot", service=SERVICE, running=True,
                        enabled=True)
    else:
        gone = apt.packages(name="No process accounting: this host withholds CAP_SYS_PACCT", packages=[PACKAGE],
                            present=False, extra_uninstall_args="--purge")
        # An acct installed here before had a failed unit; systemd keeps reporting it until told.
        server.shell(name="Forget the failed acct unit", _if=gone.did_change,
                     commands=[f"systemctl reset-failed {SERVICE} 2>/dev/null || true"])


apply = accounting
