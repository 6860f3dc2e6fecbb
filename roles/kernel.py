"""Kernel and sysctl: dev-sec linux-baseline's sysctl set, kernel self-protection, no core dumps,
unused file systems and rare network protocols blacklisted.

Two sysctl files, because a container may only write `net.*` (its own network namespace):
`99-zz-hardkit-network.conf` holds the `net.*` keys (they hold in nspawn and on a VM alike) and
`99-zz-hardkit-kernel.conf` the `kernel.*`/`fs.*`/`vm.*` keys (a VM or metal only; systemd-sysctl
skips them without error in a container). Both are key-checked against `/proc/sys` before they
go live and applied at once with systemd-sysctl, which also applies them at every boot (and,
for the `*` interface patterns, to every interface udev adds later).

A host declared a container (`container: True`) that systemd-detect-virt also finds to be one carries
no kernel image: it never boots its own kernel (the provider's runs it), so an installed one is only
weight to patch, /boot files and initramfs rebuilds at each upgrade, and a standing "a newer kernel
is installed, reboot" signal (needrestart, Lynis KRNL-5830) that a reboot can never clear, which
trains people to ignore that signal. Both conditions are required: removing the kernel of a VM
declared a container by mistake would leave it unbootable.

IPv6 router advertisements are conditional (`ipv6_accept_ra`): the baseline turns them off,
but some providers hand out the IPv6 default route by RA only. systemd-networkd handles RAs in
user space and needs none of the kernel's settings, ifupdown/SLAAC setups do.

Usage (from deploy/site.py through ROLE_MODULES): ``roles.kernel.apply()``.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from roles.data import DataKey, is_bool
from roles.ops import Lines, install_file, quiet_or_fail, render
from roles.platform_data import CONTAINER

# --- inventory ----------------------------------------------------------------------------------

IP_FORWARDING = DataKey(
    "ip_forwarding", False,
    "The host routes packets (Docker, a VPN gateway). false sets net.ipv4.ip_forward and IPv6 forwarding to 0 "
    "(linux-baseline sysctl-01/19); true leaves forwarding to whoever needs it and waives those two controls.",
    is_bool)
IPV6_ENABLED = DataKey(
    "ipv6_enabled", True,
    "Keep IPv6 on. false disables it in the kernel (net.ipv6.conf.*.disable_ipv6=1, linux-baseline sysctl-18). "
    "Turn it off only if neither the provider nor the SSH allow-list uses IPv6.",
    is_bool)
IPV6_ACCEPT_RA = DataKey(
    "ipv6_accept_ra", False,
    "The kernel must learn the IPv6 route from router advertisements (providers that configure IPv6 by SLAAC "
    "with ifupdown). false applies the baseline's RA settings (sysctl-21..28); true leaves the kernel's defaults "
    "and waives those controls for the host. Hosts using systemd-networkd do not need it.",
    is_bool)
MODULES_LOCKED = DataKey(
    "kernel_modules_locked", False,
    "Forbid loading kernel modules after boot (kernel.modules_disabled=1, set by a unit once the system is up; "
    "linux-baseline sysctl-29 expects the inventory's value). Needs every module the host uses loaded at boot; "
    "undone only by a reboot.",
    is_bool)
MODULE_BLACKLIST_EXTRA = DataKey(
    "kernel_module_blacklist_extra", [],
    "More kernel modules to forbid, on top of MODULE_BLACKLIST.",
    lambda v: None if isinstance(v, list) and all(isinstance(m, str) and m.replace("-", "_").isidentifier()
                                                   for m in v) else f"must be a list of module names, not {v!r}")

KEYS = [IP_FORWARDING, IPV6_ENABLED, IPV6_ACCEPT_RA, MODULES_LOCKED, MODULE_BLACKLIST_EXTRA]

# --- expected values (the checks import these) --------------------------------------------------

#: systemd-sysctl applies files in file-name order across /etc and /usr/lib, the last value winning:
#: these must sort after Debian's /usr/lib/sysctl.d/99-protect-links.conf (procps), which sets
#: fs.protected_fifos=1 at boot (found on the vm tier: the value held until the first reboot).
NETWORK_SYSCTL_FILE = "/etc/sysctl.d/99-zz-hardkit-network.conf"
KERNEL_SYSCTL_FILE = "/etc/sysctl.d/99-zz-hardkit-kernel.conf"
MODPROBE_FILE = "/etc/modprobe.d/hardkit-blacklist.conf"
LIMITS_FILE = "/etc/security/limits.d/60-hardkit-coredump.conf"
SYSTEMD_MANAGER_FILE = "/etc/systemd/system.conf.d/60-hardkit-coredump.conf"
#: systemd-coredump's own settings: should it ever be installed (a dependency may pull it in), it
#: keeps no core on disk and extracts no backtrace (CIS Debian 12 core dump storage and backtraces).
COREDUMP_FILE = "/etc/systemd/coredump.conf.d/60-hardkit.conf"
COREDUMP_SETTINGS = {"Storage": "none", "ProcessSizeMax": "0"}
LOCK_MODULES_UNIT = "hardkit-lock-modules.service"

#: linux-baseline's network keys (sysctl-02..17, -20), the same on every host.
NETWORK_BASE = {
    "net.ipv4.conf.all.rp_filter": 1, "net.ipv4.conf.default.rp_filter": 1,             # sysctl-02
    "net.ipv4.icmp_ignore_bogus_error_responses": 1,                                     # sysctl-03
    "net.ipv4.icmp_echo_ignore_broadcasts": 1,                                           # sysctl-04
    "net.ipv4.icmp_ratelimit": 100,                                                      # sysctl-05
    "net.ipv4.icmp_ratemask": 88089,                                                     # sysctl-06
    "net.ipv4.tcp_timestamps": 0,                                                        # sysctl-07
    "net.ipv4.conf.all.arp_ignore": 1,                                                   # sysctl-08
    "net.ipv4.conf.all.arp_announce": 2,                                                 # sysctl-09
    "net.ipv4.tcp_rfc1337": 1,                                                           # sysctl-10
    "net.ipv4.tcp_syncookies": 1,                                                        # sysctl-11
    "net.ipv4.conf.all.shared_media": 1, "net.ipv4.conf.default.shared_media": 1,       # sysctl-12
    "net.ipv4.conf.all.accept_source_route": 0, "net.ipv4.conf.default.accept_source_route": 0,  # sysctl-13
    "net.ipv6.conf.all.accept_source_route": 0, "net.ipv6.conf.default.accept_source_route": 0,
    "net.ipv4.conf.all.accept_redirects": 0, "net.ipv4.conf.default.accept_redirects": 0,        # sysctl-14
    "net.ipv4.conf.all.secure_redirects": 0, "net.ipv4.conf.default.secure_redirects": 0,        # sysctl-15
    "net.ipv4.conf.all.send_redirects": 0, "net.ipv4.conf.default.send_redirects": 0,            # sysctl-16
    "net.ipv4.conf.all.log_martians": 1, "net.ipv4.conf.default.log_martians": 1,                # sysctl-17
    "net.ipv6.conf.all.accept_redirects": 0, "net.ipv6.conf.default.accept_redirects": 0,        # sysctl-20
}
#: Keys where the kernel ORs the interface's own value with `all` (or reads only the interface's):
#: `all`/`default` alone leave an interface that existed before them accepting redirects. Set on
#: every interface with systemd-sysctl's `*` pattern (udev re-applies it to interfaces added later).
PER_INTERFACE = {
    "net.ipv4.conf.*.accept_redirects": 0, "net.ipv4.conf.*.secure_redirects": 0,
    "net.ipv4.conf.*.send_redirects": 0, "net.ipv4.conf.*.accept_source_route": 0,
    "net.ipv6.conf.*.accept_redirects": 0, "net.ipv6.conf.*.accept_source_route": 0,
}
FORWARDING_OFF = {"net.ipv4.ip_forward": 0, "net.ipv4.conf.all.forwarding": 0,  # sysctl-01
                  "net.ipv6.conf.all.forwarding": 0}                            # sysctl-19
IPV6_OFF = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}  # sysctl-18
#: linux-baseline sysctl-21..28: the kernel ignores router advertisements and autoconfiguration.
RA_OFF = {
    "net.ipv6.conf.default.router_solicitations": 0,   # sysctl-21
    "net.ipv6.conf.default.accept_ra_rtr_pref": 0,     # sysctl-22
    "net.ipv6.conf.default.accept_ra_pinfo": 0,        # sysctl-23
    "net.ipv6.conf.default.accept_ra_defrtr": 0,       # sysctl-24
    "net.ipv6.conf.all.accept_ra": 0, "net.ipv6.conf.default.accept_ra": 0,  # sysctl-25
    "net.ipv6.conf.default.autoconf": 0,               # sysctl-26
    "net.ipv6.conf.default.dad_transmits": 0,          # sysctl-27
    "net.ipv6.conf.default.max_addresses": 1,          # sysctl-28
}

#: Kernel self-protection (a real kernel only): linux-baseline sysctl-29..35 plus what Lynis and
#: KSPP add. `-` marks keys an older or differently built kernel may lack.
KERNEL = {
    "kernel.sysrq": 0,                      # sysctl-30
    "fs.suid_dumpable": 0,                  # sysctl-31a (0: no setuid dumps, so 31b's path rule is moot)
    "kernel.core_pattern": "|/bin/false",   # core dumps off (also RLIMIT_CORE 0 below)
    "kernel.core_uses_pid": 1,
    "kernel.randomize_va_space": 2,         # sysctl-32
    "fs.protected_fifos": 2, "fs.protected_hardlinks": 1,  # sysctl-34
    "fs.protected_regular": 2, "fs.protected_symlinks": 1,
    "kernel.yama.ptrace_scope": 2,          # sysctl-35: only CAP_SYS_PTRACE may attach (3 would stop root too)
    "kernel.kptr_restrict": 2,              # no kernel pointers for anyone
    "kernel.dmesg_restrict": 1,             # kernel log for CAP_SYSLOG only
    "kernel.perf_event_paranoid": 3,
    "kernel.unprivileged_bpf_disabled": 1,
    "net.core.bpf_jit_harden": 2,
    "kernel.kexec_load_disabled": 1,
    "kernel.ctrl-alt-del": 0,
    "dev.tty.ldisc_autoload": 0,
    "vm.unprivileged_userfaultfd": 0,
}
#: Keys a kernel may lack (systemd-sysctl skips a missing `-key` silently).
KERNEL_OPTIONAL = {"dev.tty.ldisc_autoload", "vm.unprivileged_userfaultfd", "kernel.yama.ptrace_scope"}

#: Unused file systems (linux-baseline os-10, CIS 1.1.1) and rare network protocols and buses a VPS
#: never needs. vfat is added only when the host did not boot by EFI (its ESP is vfat).
MODULE_BLACKLIST = [
    "cramfs", "freevxfs", "jffs2", "hfs", "hfsplus", "squashfs", "udf",
    "dccp", "sctp", "rds", "tipc", "n_hdlc", "ax25", "netrom", "x25", "rose", "decnet", "econet",
    "af_802154", "ipx", "appletalk", "psnap", "p8023", "p8022", "can", "atm",
    "usb_storage", "firewire_core", "firewire_ohci", "thunderbolt",
]
EFI_FILESYSTEM = "vfat"
#: What a blacklisted module's `install` line runs instead of loading it: /bin/true, the form
#: linux-baseline os-10 and Lynis (NETW-3200) look for; either form stops the module loading.
MODULE_INSTALL_COMMAND = "/bin/true"

#: Validates a staged sysctl file: every literal key must exist on this kernel (a typo or a key this
#: kernel lacks would otherwise be skipped silently at boot). `-key` and `*` patterns are allowed.
SYSCTL_KEY_CHECK = (
    "awk -F= '/^[[:space:]]*[^#;[:space:]]/ {k=$1; gsub(/[[:space:]]/, \"\", k); print k}' {path} | "
    "while read -r k; do case \"$k\" in -*|*'*'*) continue;; esac; "
    "test -e \"/proc/sys/$(echo \"$k\" | tr . /)\" || { echo \"unknown sysctl key: $k\" >&2; exit 1; }; done"
)
#: The kernel file's keys are hidden or read-only in a container (not its kernel): checked on a VM or metal.
KERNEL_KEY_CHECK = f"systemd-detect-virt --container --quiet || ( {SYSCTL_KEY_CHECK} )"
#: Validates a staged modprobe.d file: modprobe parses it and warns about every bad line.
MODPROBE_CHECK = quiet_or_fail("modprobe -C {path} --showconfig >/dev/null")
SYSTEMD_SYSCTL = "/lib/systemd/systemd-sysctl"


#: Installed kernel image packages (the versioned ones and the linux-image-* metapackage), one a line.
KERNEL_IMAGES_COMMAND = ("dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' 'linux-image-*' 2>/dev/null "
                         "| awk '$1 ~ /^.i/ {print $2}' || true")
#: Prints "container" only when the host really is one (the declaration alone is not enough to remove a kernel).
DETECTED_CONTAINER_COMMAND = "systemd-detect-virt --container --quiet && echo container || true"


def kernel_images_to_remove(data, images: list[str], detected_container: bool) -> list[str]:
    """The kernel image packages to purge: all of them on a declared container that is one, else none."""
    return sorted(images) if CONTAINER.value(data) and detected_container else []


def network_sysctls(data) -> dict[str, int]:
    """The `net.*` values this host must have in force, from its inventory data."""
    values = dict(NETWORK_BASE)
    if not IP_FORWARDING.value(data):
        values.update(FORWARDING_OFF)
    if not IPV6_ENABLED.value(data):
        values.update(IPV6_OFF)
    if not IPV6_ACCEPT_RA.value(data):
        values.update(RA_OFF)
    return values


def kernel_sysctls(data) -> dict[str, int | str]:
    values = dict(KERNEL)
    values["kernel.modules_disabled"] = 1 if MODULES_LOCKED.value(data) else 0  # sysctl-29: set by the unit
    return values


def blacklist(data, efi: bool) -> list[str]:
    mods = list(MODULE_BLACKLIST) + [m for m in MODULE_BLACKLIST_EXTRA.value(data) if m not in MODULE_BLACKLIST]
    return mods if efi else mods + [EFI_FILESYSTEM]


def _sysctl_text(title: str, values: dict, patterns: dict | None = None, optional=frozenset()) -> str:
    return render("os/sysctl.conf.j2", title=title, values=values, patterns=patterns or {}, optional=optional)


@deploy("Kernel and sysctl")
def kernel():
    data = host.data
    network = install_file(
        name="sysctl: network (linux-baseline sysctl-01..28)", dest=NETWORK_SYSCTL_FILE, mode="0644",
        content=_sysctl_text("network (net.*: in force in containers too)", network_sysctls(data), PER_INTERFACE),
        validate=SYSCTL_KEY_CHECK)
    kernel_file = install_file(
        name="sysctl: kernel self-protection", dest=KERNEL_SYSCTL_FILE, mode="0644",
        content=_sysctl_text("kernel self-protection (a real kernel only)", KERNEL,
                             optional=KERNEL_OPTIONAL),
        validate=KERNEL_KEY_CHECK)
    server.shell(name="Apply changed sysctl files now", _if=any_changed(network, kernel_file),
                 commands=[f"{SYSTEMD_SYSCTL} {NETWORK_SYSCTL_FILE} {KERNEL_SYSCTL_FILE}"])

    efi = bool(host.get_fact(Lines, command="test -d /sys/firmware/efi && echo efi || true"))
    install_file(name="Blacklist unused file systems and rare protocols", dest=MODPROBE_FILE, mode="0644",
                 content=render("os/modprobe-blacklist.conf.j2", modules=blacklist(data, efi),
                                install=MODULE_INSTALL_COMMAND, efi=efi),
                 validate=MODPROBE_CHECK)

    install_file(name="Core dumps: hard limit 0 for every login", dest=LIMITS_FILE, mode="0644",
                 content="# hardkit: no core dumps (they can hold keys and credentials)\n*    hard    core    0\n"
                         "root hard    core    0\n")
    manager = install_file(name="Core dumps: limit 0 for every service", dest=SYSTEMD_MANAGER_FILE, mode="0644",
                           content="# hardkit: no core dumps from services\n[Manager]\nDefaultLimitCORE=0\n")
    server.shell(name="Re-execute systemd for the new manager defaults", _if=manager.did_change,
                 commands=["systemctl daemon-reexec"])
    install_file(name="Core dumps: systemd-coredump stores none and extracts no backtrace", dest=COREDUMP_FILE,
                 mode="0644", content="# hardkit: no core dumps kept by systemd-coredump\n[Coredump]\n"
                                      + "".join(f"{k}={v}\n" for k, v in COREDUMP_SETTINGS.items()))

    _modules_lock(MODULES_LOCKED.value(data))
    images = kernel_images_to_remove(data, host.get_fact(Lines, command=KERNEL_IMAGES_COMMAND),
                                     bool(host.get_fact(Lines, command=DETECTED_CONTAINER_COMMAND)))
    if images:
        apt.packages(name="A container boots no kernel of its own: no kernel image", packages=images,
                     present=False, extra_uninstall_args="--purge")


def _modules_lock(locked: bool) -> None:
    path = f"/etc/systemd/system/{LOCK_MODULES_UNIT}"
    if locked:
        unit = install_file(name="Unit: forbid module loading once the system is up", dest=path, mode="0644",
                            content=render("os/hardkit-lock-modules.service.j2"),
                            validate=quiet_or_fail("systemd-analyze verify {path}"))
        server.shell(name="Reload systemd units", _if=unit.did_change, commands=["systemctl daemon-reload"])
        systemd.service(name="Enable the module lock for the next boot", service=LOCK_MODULES_UNIT,
                        running=None, enabled=True)
    else:
        unit = files.file(name="No module lock unit", path=path, present=False)
        server.shell(name="Reload systemd units", _if=unit.did_change, commands=["systemctl daemon-reload"])


apply = kernel
