"""Kernel and sysctl: linux-baseline sysctl-01..35, os-10 (unused file systems), os-12 (CPU
vulnerabilities), and hardkit's own kernel controls — all read from the running kernel.

`net.*` values live in the host's network namespace, so they hold (and are checked) in a
container too; `kernel.*`/`fs.*`/`vm.*` values, modules and CPU state belong to the kernel and
are checked on a real one (the vm tier).
"""

from __future__ import annotations

import pytest

from roles import kernel as role
from roles.platform_data import CONTAINER
from tests.compliance import os_state

#: control id -> (title, sysctl keys the role sets for it). Expected values come from the role.
SYSCTL_CONTROLS = {
    "sysctl-01": ("IPv4 forwarding is off", ["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"]),
    "sysctl-02": ("Reverse path filtering", ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"]),
    "sysctl-03": ("ICMP bogus error responses are ignored", ["net.ipv4.icmp_ignore_bogus_error_responses"]),
    "sysctl-04": ("ICMP echo to broadcast addresses is ignored", ["net.ipv4.icmp_echo_ignore_broadcasts"]),
    "sysctl-05": ("ICMP rate limit", ["net.ipv4.icmp_ratelimit"]),
    "sysctl-06": ("ICMP rate mask", ["net.ipv4.icmp_ratemask"]),
    "sysctl-07": ("TCP timestamps are off", ["net.ipv4.tcp_timestamps"]),
    "sysctl-08": ("ARP ignore", ["net.ipv4.conf.all.arp_ignore"]),
    "sysctl-09": ("ARP announce", ["net.ipv4.conf.all.arp_announce"]),
    "sysctl-10": ("TCP RFC 1337 (TIME-WAIT assassination)", ["net.ipv4.tcp_rfc1337"]),
    "sysctl-11": ("SYN cookies against SYN floods", ["net.ipv4.tcp_syncookies"]),
    "sysctl-12": ("Shared media", ["net.ipv4.conf.all.shared_media", "net.ipv4.conf.default.shared_media"]),
    "sysctl-13": ("Source routing is refused (IPv4 and IPv6)",
                  ["net.ipv4.conf.all.accept_source_route", "net.ipv4.conf.default.accept_source_route",
                   "net.ipv6.conf.all.accept_source_route", "net.ipv6.conf.default.accept_source_route"]),
    "sysctl-14": ("IPv4 redirects are refused",
                  ["net.ipv4.conf.all.accept_redirects", "net.ipv4.conf.default.accept_redirects"]),
    "sysctl-15": ("IPv4 secure redirects are refused",
                  ["net.ipv4.conf.all.secure_redirects", "net.ipv4.conf.default.secure_redirects"]),
    "sysctl-16": ("No redirects are sent", ["net.ipv4.conf.all.send_redirects", "net.ipv4.conf.default.send_redirects"]),
    "sysctl-17": ("Martian packets are logged", ["net.ipv4.conf.all.log_martians", "net.ipv4.conf.default.log_martians"]),
    "sysctl-19": ("IPv6 forwarding is off", ["net.ipv6.conf.all.forwarding"]),
    "sysctl-20": ("IPv6 redirects are refused",
                  ["net.ipv6.conf.all.accept_redirects", "net.ipv6.conf.default.accept_redirects"]),
    "sysctl-21": ("No IPv6 router solicitations", ["net.ipv6.conf.default.router_solicitations"]),
    "sysctl-22": ("No router preference from RAs", ["net.ipv6.conf.default.accept_ra_rtr_pref"]),
    "sysctl-23": ("No prefix information from RAs", ["net.ipv6.conf.default.accept_ra_pinfo"]),
    "sysctl-24": ("No default router from RAs", ["net.ipv6.conf.default.accept_ra_defrtr"]),
    "sysctl-25": ("Router advertisements are refused", ["net.ipv6.conf.all.accept_ra", "net.ipv6.conf.default.accept_ra"]),
    "sysctl-26": ("No IPv6 autoconfiguration", ["net.ipv6.conf.default.autoconf"]),
    "sysctl-27": ("No duplicate address detection probes", ["net.ipv6.conf.default.dad_transmits"]),
    "sysctl-28": ("One global IPv6 address per interface", ["net.ipv6.conf.default.max_addresses"]),
    "sysctl-29": ("Kernel module loading as the inventory says", ["kernel.modules_disabled"]),
    "sysctl-30": ("Magic SysRq is off", ["kernel.sysrq"]),
    "sysctl-31a": ("No core dumps from setuid programs", ["fs.suid_dumpable"]),
    "sysctl-32": ("Full address space layout randomisation", ["kernel.randomize_va_space"]),
    "sysctl-34": ("Links, FIFOs and regular files in sticky folders are protected",
                  ["fs.protected_fifos", "fs.protected_hardlinks", "fs.protected_regular", "fs.protected_symlinks"]),
    "sysctl-35": ("ptrace restricted to CAP_SYS_PTRACE (Yama scope 2)", ["kernel.yama.ptrace_scope"]),
    "hk-os-kern-01": ("Kernel pointers and the kernel log are hidden from users",
                      ["kernel.kptr_restrict", "kernel.dmesg_restrict"]),
    "hk-os-kern-02": ("Unprivileged BPF, perf, kexec, TTY line disciplines and userfaultfd are closed",
                      ["kernel.unprivileged_bpf_disabled", "net.core.bpf_jit_harden", "kernel.perf_event_paranoid",
                       "kernel.kexec_load_disabled", "dev.tty.ldisc_autoload", "vm.unprivileged_userfaultfd",
                       "kernel.ctrl-alt-del"]),
}
#: Controls an inventory choice turns off for a host: (key, value that waives, why).
INVENTORY_WAIVERS = {
    **{c: (role.IP_FORWARDING, True, "the host forwards packets (ip_forwarding=true: Docker, VPN)")
       for c in ("sysctl-01", "sysctl-19")},
    **{c: (role.IPV6_ACCEPT_RA, True, "the provider configures IPv6 by router advertisements (ipv6_accept_ra=true)")
       for c in ("sysctl-21", "sysctl-22", "sysctl-23", "sysctl-24", "sysctl-25", "sysctl-26", "sysctl-27",
                 "sysctl-28")},
}


def expected(target) -> dict:
    return {**role.network_sysctls(target.data), **role.kernel_sysctls(target.data)}


def _kernel_level(key: str) -> bool:
    return key in role.KERNEL or key == "kernel.modules_disabled"


def _make_sysctl_check(control: str, keys: list[str]):
    def check(target):
        waiver = INVENTORY_WAIVERS.get(control)
        if waiver and waiver[0].value(target.data) == waiver[1]:
            pytest.skip(f"waived: {waiver[2]}")
        if any(_kernel_level(k) for k in keys):
            target.require_kernel("kernel sysctls " + ", ".join(k for k in keys if _kernel_level(k)))
        want, have = expected(target), os_state.sysctl(target)
        wrong = {k: (have.get(k, "missing"), want[k]) for k in keys if have.get(k) != str(want[k])}
        optional_missing = {k for k, (got, _) in wrong.items() if got == "missing" and k in role.KERNEL_OPTIONAL}
        assert not set(wrong) - optional_missing, "in force / expected: " + ", ".join(
            f"{k}={got} (want {w})" for k, (got, w) in wrong.items())
    return check


os_state.register_checks(globals(), SYSCTL_CONTROLS, _make_sysctl_check)


@pytest.mark.control("sysctl-18")
def test_sysctl_18_ipv6_as_the_inventory_says(target):
    """IPv6 is disabled unless the inventory keeps it"""
    want = "0" if role.IPV6_ENABLED.value(target.data) else "1"
    have = os_state.sysctl(target)
    assert have.get("net.ipv6.conf.all.disable_ipv6") == want, \
        f"disable_ipv6={have.get('net.ipv6.conf.all.disable_ipv6')}, inventory ipv6_enabled wants {want}"


@pytest.mark.control("sysctl-31b")
def test_sysctl_31b_core_dump_path(target):
    """Core dumps of setuid programs (if allowed) go to an absolute path"""
    target.require_kernel("fs.suid_dumpable and kernel.core_pattern")
    have = os_state.sysctl(target)
    if have.get("fs.suid_dumpable") == "2":
        assert have.get("kernel.core_pattern", "").lstrip("|").startswith("/"), have.get("kernel.core_pattern")
    else:
        assert have.get("fs.suid_dumpable") == "0", "setuid dumps must be off (0) or go to an absolute path (2)"


@pytest.mark.control("sysctl-33")
def test_sysctl_33_nx(target):
    """The CPU's no-execute (NX) protection is available"""
    target.require_kernel("the CPU's NX flag")
    flags = target.fact("os:cpuflags", lambda t: t.check_output("grep -m1 '^flags' /proc/cpuinfo").split())
    assert "nx" in flags, "the CPU has no NX flag"


@pytest.mark.control("hk-os-kern-03")
def test_redirects_refused_on_every_interface(target):
    """Every interface refuses redirects and source routing, not only all/default"""
    have = os_state.sysctl(target)
    wrong = []
    for pattern, value in role.PER_INTERFACE.items():
        prefix, _, suffix = pattern.partition("*")
        for key, got in have.items():
            if key.startswith(prefix) and key.endswith(suffix) and got != str(value):
                wrong.append(f"{key}={got}")
    assert not wrong, "interfaces still accepting: " + ", ".join(wrong)


@pytest.mark.control("hk-os-kern-04")
def test_no_core_dumps(target):
    """No core dumps: services and logins have a core limit of 0, systemd-coredump keeps none, the kernel discards dumps"""
    manager = target.check_output("systemctl show -p DefaultLimitCORE --value").strip()
    assert manager == "0", f"systemd's DefaultLimitCORE is {manager}"
    # systemd-coredump's effective settings: the last value of each key across its files wins
    coredump = os_state.key_values(target.check_output("systemd-analyze cat-config systemd/coredump.conf"), sep="=")
    wrong = {k: coredump.get(k) for k, v in role.COREDUMP_SETTINGS.items() if coredump.get(k) != v}
    assert not wrong, f"systemd-coredump would keep core dumps: {wrong} (want {role.COREDUMP_SETTINGS})"
    login = target.check_output("sh -c 'ulimit -Hc'").strip()
    assert login == "0", f"a login session may dump {login} blocks of core"
    if not target.in_container:
        assert os_state.sysctl(target).get("kernel.core_pattern") == role.KERNEL["kernel.core_pattern"]


@pytest.mark.control("hk-os-kern-05")
def test_a_container_carries_no_kernel_image(target):
    """A declared container carries no kernel image: it never boots one of its own"""
    if not CONTAINER.value(target.data):
        pytest.skip("the host is not declared a container: it boots its own kernel, which stays installed")
    assert target.in_container, "declared a container, but systemd-detect-virt finds none: its kernel stays"
    images = target.check_output(role.KERNEL_IMAGES_COMMAND).split()
    assert not images, f"kernel image packages installed on a container: {', '.join(images)}"


@pytest.mark.control("os-10")
def test_os_10_unused_filesystems_and_protocols(target):
    """Unused file systems and rare protocols cannot be loaded"""
    target.require_kernel("kernel module loading (blacklists)")
    efi = target.host.run("test -d /sys/firmware/efi").rc == 0
    mods = role.blacklist(target.data, efi)
    out = target.check_output("for m in " + " ".join(mods) + "; do echo \"$m|$(modprobe -n -v $m 2>&1 | tr '\\n' ' ')\"; "
                              "done; echo @@loaded; cut -d' ' -f1 /proc/modules")
    probes, _, loaded = out.partition("@@loaded")
    loaded_set = set(loaded.split())
    bad = []
    for line in probes.strip().splitlines():
        mod, _, plan = line.partition("|")
        if f"install {role.MODULE_INSTALL_COMMAND}" not in plan:
            bad.append(f"{mod} would load ({plan.strip() or 'no plan'})")
        if mod in loaded_set:
            bad.append(f"{mod} is loaded")
    assert not bad, "; ".join(bad)


@pytest.mark.control("os-12")
def test_os_12_cpu_vulnerabilities(target):
    """The kernel reports no CPU vulnerability as unmitigated"""
    target.require_kernel("CPU vulnerability mitigations")
    out = target.check_output("grep -H . /sys/devices/system/cpu/vulnerabilities/* 2>/dev/null || true")
    vulnerable = [line for line in out.splitlines() if "vulnerable" in line.split(":", 1)[-1].lower()
                  and "not affected" not in line.lower()]
    assert not vulnerable, "; ".join(vulnerable)
