"""The OS-baseline roles' rendered files, checked by the real validators on the controller.

Every file a role installs with a validator is rendered here with the default inventory and
run through the same command the role runs on the host (systemd-analyze verify, apt-config,
perl -c, findmnt --verify, modprobe, the sysctl key check, python's compiler). Files without a
validator are checked for the values the compliance checks expect.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from roles import accounting, accounts, audit, filesystem, kernel, time_logs, updates
from roles import guard as guard_role
from roles.auditors_data import UNIT_MAX_EXPOSURE
from roles.ops import render

DEFAULTS: dict = {}  # every key at its documented default


def run_validator(command: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command.replace("{path}", shlex.quote(str(path)))],
                          capture_output=True, text=True)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed on this controller")


# --- sysctl ---------------------------------------------------------------------------------------

def test_network_sysctl_file_passes_the_key_check(tmp_path):
    text = render("os/sysctl.conf.j2", title="t", values=kernel.network_sysctls(DEFAULTS),
                  patterns=kernel.PER_INTERFACE, optional=set())
    res = run_validator(kernel.SYSCTL_KEY_CHECK, write(tmp_path, "net.conf", text))
    assert res.returncode == 0, res.stderr


def test_key_check_rejects_a_typo(tmp_path):
    res = run_validator(kernel.SYSCTL_KEY_CHECK, write(tmp_path, "bad.conf", "net.ipv4.tcp_syncookis = 1\n"))
    assert res.returncode != 0 and "tcp_syncookis" in res.stderr


def test_key_check_allows_optional_keys_and_patterns(tmp_path):
    text = "-kernel.no_such_key = 1\nnet.ipv4.conf.*.accept_redirects = 0\n# comment\n"
    assert run_validator(kernel.SYSCTL_KEY_CHECK, write(tmp_path, "ok.conf", text)).returncode == 0


def test_sysctl_values_follow_the_inventory():
    base = kernel.network_sysctls({})
    assert base["net.ipv4.ip_forward"] == 0 and base["net.ipv6.conf.all.accept_ra"] == 0
    assert "net.ipv6.conf.all.disable_ipv6" not in base
    docker = kernel.network_sysctls({"ip_forwarding": True, "ipv6_accept_ra": True, "ipv6_enabled": False})
    assert "net.ipv4.ip_forward" not in docker and "net.ipv6.conf.default.accept_ra" not in docker
    assert docker["net.ipv6.conf.all.disable_ipv6"] == 1
    assert kernel.kernel_sysctls({"kernel_modules_locked": True})["kernel.modules_disabled"] == 1


def test_kernel_file_marks_optional_keys():
    text = render("os/sysctl.conf.j2", title="t", values=kernel.KERNEL, patterns={}, optional=kernel.KERNEL_OPTIONAL)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == len(kernel.KERNEL)
    for ln in lines:
        key = ln.split(" = ")[0]
        assert key.startswith("-") == (key.lstrip("-") in kernel.KERNEL_OPTIONAL)
        assert re.fullmatch(r"-?[a-z0-9_.-]+", key), key


# --- modprobe, fstab, units ----------------------------------------------------------------------

def test_modprobe_blacklist_parses(tmp_path):
    need("modprobe")
    text = render("os/modprobe-blacklist.conf.j2", modules=kernel.blacklist({}, efi=False),
                  install=kernel.MODULE_INSTALL_COMMAND, efi=False)
    assert "install vfat /bin/true" in text and "install cramfs /bin/true" in text
    res = run_validator(kernel.MODPROBE_CHECK, write(tmp_path, "bl.conf", text))
    assert res.returncode == 0, res.stderr
    assert run_validator(kernel.MODPROBE_CHECK, write(tmp_path, "x.conf", "instal cramfs\n")).returncode != 0


def test_efi_hosts_keep_vfat():
    assert "vfat" not in kernel.blacklist({}, efi=True)


def test_fstab_block_verifies_and_replaces_only_itself(tmp_path):
    need("findmnt")
    block = filesystem.fstab_block({})
    provider = ["UUID=abc / ext4 defaults 0 1", "# a comment the provider left", ""]
    once = filesystem.fstab_with_block(provider, block)
    twice = filesystem.fstab_with_block(once.splitlines(), block)
    assert once == twice, "the block must be replaced, not appended again"
    assert once.startswith("UUID=abc / ext4") and once.count(filesystem.FSTAB_BEGIN) == 1
    res = run_validator(filesystem.FSTAB_CHECK, write(tmp_path, "fstab", once))
    assert res.returncode == 0, res.stdout + res.stderr
    points = [ln.split()[1] for ln in block.splitlines() if ln and not ln.startswith("#")]
    assert points == sorted(points, key=lambda p: p.count("/")) or points[0] == "/dev"


def test_mount_flags_join_per_mount_flags_and_file_system_options():
    found = filesystem.mount_flags(["/proc rw,nosuid,nodev,noexec,relatime rw,hidepid=invisible",
                                    "/tmp rw,nosuid,nodev,noexec rw", "/run/x rw"])
    assert filesystem.PROC_HIDEPID in found["/proc"] and "nosuid" in found["/proc"]
    assert found["/tmp"] == {"rw", "nosuid", "nodev", "noexec"} and found["/run/x"] == {"rw"}


@pytest.mark.parametrize("mask, can", [("000001ffffffffff", True), ("00000000fcecbfff", False)])
def test_process_accounting_follows_cap_sys_pacct(tmp_path, mask, can):
    """The deploy installs acct only where the bounding set holds CAP_SYS_PACCT (nspawn's lacks it)."""
    status = write(tmp_path, "status", f"Name:\tsystemd\nCapBnd:\t{mask}\n")
    res = subprocess.run(["sh", "-c", accounting.CAN_ACCOUNT_COMMAND.replace("/proc/1/status", str(status))],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == ("yes" if can else ""), res


def test_fstab_check_catches_a_bad_entry(tmp_path):
    need("findmnt")
    bad = f"{filesystem.FSTAB_BEGIN}\n/tmp /tmp none bind,nosuid 0 0\n/tmp /tmp none bind 0 0\n{filesystem.FSTAB_END}\n"
    assert run_validator(filesystem.FSTAB_CHECK, write(tmp_path, "fstab", bad)).returncode != 0


def test_tmp_noexec_can_be_turned_off():
    policy = filesystem.mount_policy({"tmp_noexec": False})
    assert "noexec" not in policy["/tmp"]["options"] and "noexec" in policy["/dev/shm"]["options"]


@pytest.fixture
def unit_dir(tmp_path):
    """Rendered units, with the guard script at a path that exists on the controller."""
    need("systemd-analyze")
    guard = tmp_path / "hardkit-reboot-guard"
    guard.write_text(updates.GUARD_SOURCE.read_text())
    guard.chmod(0o755)
    units = {
        updates.GUARD_UNIT: render("os/hardkit-reboot-guard.service.j2", guard=str(guard), max_wait=7200, poll=30,
                                   timeout=7800),
        updates.GUARD_TIMER: render("os/hardkit-reboot-guard.timer.j2", calendar=updates.timer_calendar({}), margin=30),
        filesystem.MOUNT_UNIT: render("os/hardkit-mount-options.service.j2",
                                      points=list(filesystem.mount_policy({}))),
        kernel.LOCK_MODULES_UNIT: render("os/hardkit-lock-modules.service.j2"),
        guard_role.BOOT_UNIT: (guard_role.TEMPLATES / guard_role.BOOT_UNIT).read_text(),
    }
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", [updates.GUARD_UNIT, updates.GUARD_TIMER, filesystem.MOUNT_UNIT,
                                  kernel.LOCK_MODULES_UNIT])
def test_units_pass_systemd_analyze_verify(unit_dir, unit):
    res = run_validator(updates.UNIT_CHECK, unit_dir / unit)
    assert res.returncode == 0, res.stderr


#: hardkit-mount-options' exposure with every sandboxing option that keeps the host's mount namespace
#: (the figure its waiver of ext-units-02 in tests/compliance/waivers.toml states).
MOUNT_UNIT_EXPOSURE = 2.5


def exposure(path: Path) -> float:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(path)],
                         capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert score, res.stdout[-500:] + res.stderr[-500:]
    return float(score.group(1))


@pytest.mark.parametrize("unit", [updates.GUARD_UNIT, kernel.LOCK_MODULES_UNIT, guard_role.BOOT_UNIT])
def test_units_within_the_audit_limit(unit_dir, unit):
    """What `hardkit audit` holds every hardkit unit to on the host (ext-units-01), checked before a deploy."""
    assert exposure(unit_dir / unit) <= UNIT_MAX_EXPOSURE.default


def test_mount_unit_sandboxed_as_far_as_the_host_namespace_allows(unit_dir):
    assert exposure(unit_dir / filesystem.MOUNT_UNIT) <= MOUNT_UNIT_EXPOSURE


# --- apt, needrestart -------------------------------------------------------------------------------

@pytest.mark.parametrize("point_releases", [False, True])
def test_unattended_upgrades_config(tmp_path, point_releases):
    need("apt-config")
    data = {"updates_point_releases": point_releases, "updates_package_blocklist": ["^linux-"]}
    text = render("os/52hardkit-unattended-upgrades.j2", origins=updates.origins(data),
                  blocklist=updates.PACKAGE_BLOCKLIST.value(data), settings=updates.UU_SETTINGS)
    path = write(tmp_path, "52uu", text)
    assert run_validator(updates.APT_CONFIG_CHECK, path).returncode == 0
    dump = subprocess.run(["apt-config", "-c", str(path), "dump", "Unattended-Upgrade"],
                          capture_output=True, text=True).stdout
    origins = re.findall(r'Origins-Pattern:: "([^"]+)"', dump)
    assert origins == updates.origins(data)
    assert origins[0] == updates.SECURITY_ORIGIN and (len(origins) > 1) == point_releases
    assert 'Automatic-Reboot "false"' in dump


def test_clear_drops_debians_default_origins(tmp_path):
    """Debian's 50unattended-upgrades lists point releases; ours must replace, not extend, it."""
    need("apt-config")
    debian = write(tmp_path, "50uu", 'Unattended-Upgrade::Origins-Pattern {\n'
                                     '  "origin=Debian,codename=${distro_codename},label=Debian";\n};\n')
    ours = write(tmp_path, "52uu", render("os/52hardkit-unattended-upgrades.j2", origins=updates.origins({}),
                                          blocklist=[], settings=updates.UU_SETTINGS))
    both = write(tmp_path, "both", debian.read_text() + ours.read_text())
    dump = subprocess.run(["apt-config", "-c", str(both), "dump", "Unattended-Upgrade::Origins-Pattern"],
                          capture_output=True, text=True).stdout
    assert re.findall(r'Origins-Pattern:: "([^"]+)"', dump) == [updates.SECURITY_ORIGIN]


def test_periodic_config(tmp_path):
    need("apt-config")
    path = write(tmp_path, "20auto", render("os/20auto-upgrades.j2", periodic=updates.PERIODIC))
    assert run_validator(updates.APT_CONFIG_CHECK, path).returncode == 0
    assert run_validator(updates.APT_CONFIG_CHECK, write(tmp_path, "bad", 'APT::Periodic "1"\n')).returncode != 0


def test_needrestart_config_is_perl(tmp_path):
    need("perl")
    text = render("os/needrestart.conf.j2", protected=["hardkit-bot.*", "postgres"])
    res = subprocess.run(["perl", "-e", "our %nrconf; do $ARGV[0] or die $@; "
                          "print join(',', sort keys %{$nrconf{override_rc}}), \"|$nrconf{restart}\"",
                          str(write(tmp_path, "nr.conf", text))], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    keys, restart = res.stdout.split("|")
    assert restart == "a" and "hardkit-bot" in keys and "postgres" in keys


# --- accounts ------------------------------------------------------------------------------------

def test_login_defs_holds_the_baseline_values():
    text = render("os/login.defs.j2", values=accounts.LOGIN_DEFS)
    parsed = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.split(None, 1)
            assert k not in parsed, f"{k} set twice"
            parsed[k] = v.strip()
    for key, value in {"UMASK": "027", "PASS_MAX_DAYS": "60", "PASS_MIN_DAYS": "7", "PASS_WARN_AGE": "7",
                       "LOGIN_RETRIES": "5", "LOGIN_TIMEOUT": "60", "UID_MIN": "1000", "GID_MIN": "1000"}.items():
        assert parsed[key] == value, key  # linux-baseline os-05


def test_pam_profiles_wrap_pam_unix():
    pre = render(accounts.PAM_PROFILES["hardkit-faillock-preauth"])
    post = render(accounts.PAM_PROFILES["hardkit-faillock"])
    prio = lambda t: int(re.search(r"^Priority: (\d+)$", t, re.M).group(1))  # noqa: E731
    assert prio(pre) > 256 > prio(post), "preauth above pam_unix (256), authfail below"
    assert "even_deny_root" not in render("os/faillock.conf.j2", deny=5, unlock=900, interval=900).replace(
        "no even_deny_root", "")


def test_pam_su_requires_the_group():
    lines = [ln.split() for ln in render("os/pam-su.j2", group=accounts.SU_GROUP).splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0][:3] == ["auth", "sufficient", "pam_rootok.so"]
    assert lines[1][:3] == ["auth", "required", "pam_wheel.so"] and f"group={accounts.SU_GROUP}" in lines[1]


def test_key_only_accounts_are_found():
    parsed = accounts.parse_accounts(["ops:!:set:60:/bin/bash", "web:$:set:60:/bin/bash",
                                      "daemon:*:set:99999:/usr/sbin/nologin", "empty::EMPTY:60:/bin/sh"])
    by = {a["name"]: a for a in parsed}
    assert not by["ops"]["usable_password"] and accounts.can_log_in(by["ops"])
    assert by["web"]["usable_password"] and not accounts.can_log_in(by["daemon"]) and by["empty"]["empty"]


# --- audit ---------------------------------------------------------------------------------------

def _syscalls(abi: str) -> set[str] | None:
    header = Path(f"/usr/include/x86_64-linux-gnu/asm/unistd_{abi}.h")
    if not header.exists():
        return None
    return set(re.findall(r"#define __NR_(\w+) ", header.read_text()))


def test_audit_rules_are_well_formed():
    text = audit.rules_text({}, ["/usr/bin/sudo", "/usr/bin/passwd"])
    counts: dict[str, int] = {}
    known = {"b64": _syscalls("64"), "b32": _syscalls("32")}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key = re.search(r" -k (\S+)$", line).group(1)
        counts[key] = counts.get(key, 0) + 1
        if line.startswith("-w "):
            assert re.fullmatch(r"-w /\S+ -p [rwxa]+ -k [\w-]+", line), line
            continue
        assert line.startswith("-a always,exit "), line
        arch = re.search(r"-F arch=(b64|b32)", line)
        for names in re.findall(r"-S (\S+)", line):
            table = known[arch.group(1)] if arch else None
            if table is not None:
                unknown = set(names.split(",")) - table
                assert not unknown, f"{line}: unknown syscalls {unknown}"
    assert counts == audit.expected_rule_counts({}, ["/usr/bin/sudo", "/usr/bin/passwd"])
    for key in ("identity", "sudoers", "sshd", "privileged", "time-change", "modules", "bot-config",
                "bot-credentials"):
        assert counts.get(key), f"issue 4 asks for {key} rules"


def test_auditd_conf_has_the_baseline_values():
    text = render("os/auditd.conf.j2", settings=audit.AUDITD_SETTINGS)
    parsed = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))
    want = {"log_file": "/var/log/audit/audit.log", "log_format": "raw", "max_log_file_action": "keep_logs",
            "space_left": "75", "action_mail_acct": "root", "space_left_action": "syslog", "admin_space_left": "50",
            "admin_space_left_action": "suspend", "disk_full_action": "suspend", "disk_error_action": "suspend"}
    assert {k: parsed[k].lower() for k in want} == want
    assert parsed["flush"].lower().startswith("incremental")


# --- time and logs -------------------------------------------------------------------------------

def test_journald_and_timesyncd_render():
    j = render("os/journald.conf.j2", settings=time_logs.journald_settings({}))
    assert "Storage=persistent" in j and "SystemMaxUse=500M" in j
    t = render("os/timesyncd.conf.j2", servers=["ntp.example.net", "192.0.2.123"])
    assert t.splitlines()[-1] == "NTP=ntp.example.net 192.0.2.123"


# --- inventory keys ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, bad", [
    (updates.REBOOT_WINDOW, "25:00"), (updates.REBOOT_WINDOW, "4am"), (updates.REBOOT_MARGIN, -1),
    (updates.POINT_RELEASES, "yes"), (kernel.IPV6_ACCEPT_RA, 1), (accounts.SU_USERS, ["Root Admin"]),
    (accounts.FAILLOCK_DENY, 1), (audit.BOT_CONFIG_PATHS, ["relative/path"]), (time_logs.JOURNAL_MAX_USE, "lots"),
    (time_logs.NTP_SERVERS, []), (kernel.MODULE_BLACKLIST_EXTRA, ["bad name"]),
])
def test_data_keys_reject_bad_values(key, bad):
    assert key.check(bad), f"{key.name} accepted {bad!r}"


def test_defaults_pass_their_own_checks():
    for mod in (updates, kernel, accounts, filesystem, audit, time_logs):
        for key in mod.KEYS:
            assert key.check(key.default) is None, key.name
            assert key.doc and not key.name.startswith("ssh_"), key.name  # ssh_* keys are pyinfra's


def test_open_homes_are_found():
    lines = ["ops:/home/ops:/bin/bash:755", "bot:/var/lib/bot:/usr/sbin/nologin:777", "ann:/home/ann:/bin/sh:750",
             "bob:/home/bob:/bin/sh:770"]
    assert accounts.open_homes(lines) == ["/home/ops", "/home/bob"]


# --- login banner, shell session, compilers -----------------------------------------------------------

def test_session_profile_sets_a_readonly_idle_timeout_and_no_core_dumps(tmp_path):
    """The rendered profile.d script, sourced by a real sh: TMOUT set and readonly, core size 0."""
    need("sh")
    path = write(tmp_path, "session.sh", render("os/profile-session.sh.j2", timeout=600))
    res = subprocess.run(["sh", "-c", f". {shlex.quote(str(path))}; echo $TMOUT; ulimit -c; TMOUT=0; echo lifted"],
                         capture_output=True, text=True)
    assert res.stdout.split()[:2] == ["600", "0"] and "lifted" not in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("bad", ["", "   ", "Debian \\n \\l", 3, "x" * 2001])
def test_login_banner_refuses_what_getty_would_expand_or_nothing(bad):
    assert accounts.LOGIN_BANNER.check(bad)


def test_default_login_banner_warns_without_naming_the_os():
    text = accounts.LOGIN_BANNER.default.lower()
    assert accounts.LOGIN_BANNER.check(accounts.LOGIN_BANNER.default) is None
    assert all(word in text for word in ("authorized", "monitored", "prohibited")) and "debian" not in text


def test_compilers_command_finds_the_assembler_behind_its_link():
    """Run on this Debian controller (binutils is installed here too): `as` resolves to the real binary."""
    need("as")
    found = subprocess.run(["sh", "-c", filesystem.COMPILERS_COMMAND], capture_output=True, text=True).stdout.split()
    real = str(Path(shutil.which("as")).resolve())
    assert real in found and all(Path(p).is_absolute() and not Path(p).is_symlink() for p in found), found


def test_the_assembler_is_made_root_only_before_binutils_is_installed():
    """rkhunter pulls binutils in later in the same deploy, whose facts were read before it ran: the assembler's
    path is registered anyway (dpkg applies the override on install), or the second deploy would change."""
    need("as")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    real = str(Path(shutil.which("as")).resolve())
    assert real in filesystem.compiler_paths([], arch), "the assembler must be registered with nothing found yet"
    assert filesystem.compiler_paths(["/usr/bin/tcc"], "unknown-arch") == {"/usr/bin/tcc"}
