"""Accounts and login: linux-baseline os-01..05b, os-07..09 and hardkit's login controls (PAM
stacks in force, su, cron/at, passwords that cannot lock out a key-only admin)."""

from __future__ import annotations

import pytest

from roles import accounts as role
from roles.access_data import ADMIN_USER
from tests.compliance import os_state


@pytest.mark.control("os-01")
def test_os_01_no_hosts_equiv(target):
    """No /etc/hosts.equiv (trusted-host logins)"""
    assert not target.host.file("/etc/hosts.equiv").exists


@pytest.mark.control("os-02")
def test_os_02_shadow(target):
    """/etc/shadow is root:shadow and not readable by others"""
    user, group, mode = os_state.stats(target, ["/etc/shadow"])["/etc/shadow"]
    assert (user, group) == ("root", "shadow"), f"{user}:{group}"
    assert mode & 0o007 == 0 and mode & 0o111 == 0 and mode & 0o600 == 0o600, oct(mode)


@pytest.mark.control("os-03")
def test_os_03_passwd(target):
    """/etc/passwd is root:root 0644"""
    assert os_state.stats(target, ["/etc/passwd"])["/etc/passwd"] == ("root", "root", 0o644)


@pytest.mark.control("os-03b")
def test_os_03b_no_hashes_in_passwd(target):
    """/etc/passwd holds no password hashes"""
    leaked = [row[0] for row in os_state.passwd(target) if row[1] not in ("x", "*")]
    assert not leaked, f"password field set in /etc/passwd for: {', '.join(leaked)}"


@pytest.mark.control("os-04")
def test_os_04_no_dot_in_path(target):
    """No empty or '.' entry in PATH (login sessions, su, login.defs)"""
    paths = {"session": target.check_output("echo \"$PATH\"").strip()}
    defs = os_state.key_values(os_state.text(target, role.LOGIN_DEFS_FILE))
    for key in ("ENV_PATH", "ENV_SUPATH"):
        paths[key] = defs.get(key, "").removeprefix("PATH=")
    env = os_state.key_values(os_state.text(target, "/etc/environment") or "", sep="=")
    if "PATH" in env:
        paths["/etc/environment"] = env["PATH"].strip('"')
    bad = {k: v for k, v in paths.items() if any(p in ("", ".") for p in v.split(":"))}
    assert not bad, f"PATH with an empty or '.' entry: {bad}"


@pytest.mark.control("os-05")
def test_os_05_login_defs(target):
    """login.defs: umask, password aging, login limits, PATHs, UID/GID ranges"""
    user, group, mode = os_state.stats(target, [role.LOGIN_DEFS_FILE])[role.LOGIN_DEFS_FILE]
    assert (user, group, mode) == ("root", "root", 0o644)
    have = os_state.key_values(os_state.text(target, role.LOGIN_DEFS_FILE))
    wrong = {k: (have.get(k), v) for k, v in role.LOGIN_DEFS.items() if have.get(k) != v}
    assert not wrong, "in force / expected: " + ", ".join(f"{k}={h} (want {w})" for k, (h, w) in wrong.items())


@pytest.mark.control("os-05b")
def test_os_05b_system_id_ranges(target):
    """login.defs: system UID/GID ranges are set and the file is not writable by group or others"""
    _, _, mode = os_state.stats(target, [role.LOGIN_DEFS_FILE])[role.LOGIN_DEFS_FILE]
    assert mode & 0o022 == 0, oct(mode)
    have = os_state.key_values(os_state.text(target, role.LOGIN_DEFS_FILE))
    for key in ("SYS_UID_MIN", "SYS_UID_MAX", "SYS_GID_MIN", "SYS_GID_MAX"):
        assert have.get(key) == role.LOGIN_DEFS[key], f"{key}={have.get(key)}"


@pytest.mark.control("os-07")
def test_os_07_unique_ids(target):
    """UIDs, GIDs, user and group names are unique; only root has UID 0"""
    users, groups = os_state.passwd(target), os_state.group(target)
    uids = [row[2] for row in users]
    gids = [row[2] for row in groups]
    assert len(uids) == len(set(uids)), f"duplicate UIDs: {sorted({u for u in uids if uids.count(u) > 1})}"
    assert len(gids) == len(set(gids)), f"duplicate GIDs: {sorted({g for g in gids if gids.count(g) > 1})}"
    assert len({r[0] for r in users}) == len(users) and len({r[0] for r in groups}) == len(groups)
    assert [r[0] for r in users if r[2] == "0"] == ["root"]


@pytest.mark.control("os-08")
def test_os_08_entropy(target):
    """The kernel's random pool is fully seeded"""
    avail = int(target.check_output("cat /proc/sys/kernel/random/entropy_avail").strip())
    major, minor = os_state.kernel_release(target)
    # Since Linux 5.18 the pool is a 256-bit BLAKE2s state: entropy_avail tops out at 256 (= fully seeded).
    need = 256 if (major, minor) >= (5, 18) else 1000
    assert avail >= need, f"entropy_avail={avail} (kernel {major}.{minor} needs {need})"


@pytest.mark.control("os-09")
def test_os_09_no_rhosts_netrc(target):
    """No .rhosts or .netrc files"""
    found = target.check_output("find / -maxdepth 3 \\( -iname .rhosts -o -iname .netrc \\) -print 2>/dev/null "
                                "| grep -v '^/proc' || true").split()
    assert not found, f"found: {', '.join(found)}"


@pytest.mark.control("hk-os-acct-01")
def test_pam_stacks_in_force(target):
    """PAM: faillock before and after the password check, pam_umask in every session"""
    stacks = os_state.texts(target, [f"/etc/pam.d/{s}" for s in role.PAM_EXPECTED])
    for stack, fragments in role.PAM_EXPECTED.items():
        lines = [ln for ln in (stacks[f"/etc/pam.d/{stack}"] or "").splitlines() if not ln.lstrip().startswith("#")]
        for frag in fragments:
            assert any(frag in ln for ln in lines), f"{stack} lacks {frag}"
    auth = [ln for ln in stacks["/etc/pam.d/common-auth"].splitlines() if ln.strip() and not ln.startswith("#")]
    order = [i for i, ln in enumerate(auth) if "preauth" in ln] + [i for i, ln in enumerate(auth) if "pam_unix" in ln] \
        + [i for i, ln in enumerate(auth) if "authfail" in ln]
    assert order == sorted(order), f"faillock must wrap pam_unix: {auth}"
    faillock = os_state.text(target, role.FAILLOCK_CONF) or ""
    conf = os_state.key_values(faillock, sep="=")
    assert conf.get("deny") == str(role.FAILLOCK_DENY.value(target.data))
    options = {ln.split("=")[0].strip() for ln in faillock.splitlines() if ln.strip() and not ln.startswith("#")}
    assert "even_deny_root" not in options, "root must never be locked"


@pytest.mark.control("hk-os-acct-02")
def test_su_restricted(target):
    """su: root, or members of the su group (empty unless the inventory names users)"""
    pam_su = os_state.text(target, role.PAM_SU_FILE) or ""
    active = [ln.split() for ln in pam_su.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    wheel = [ln for ln in active if len(ln) > 2 and ln[0] == "auth" and ln[2] == "pam_wheel.so"]
    assert wheel and wheel[0][1] == "required" and f"group={role.SU_GROUP}" in wheel[0], \
        f"no `auth required pam_wheel.so group={role.SU_GROUP}` in {role.PAM_SU_FILE}"
    row = next((r for r in os_state.group(target) if r[0] == role.SU_GROUP), None)
    assert row is not None, f"group {role.SU_GROUP} missing"
    assert set(filter(None, row[3].split(","))) == set(role.SU_USERS.value(target.data))


@pytest.mark.control("hk-os-acct-03")
def test_cron_and_at_root_only(target):
    """cron and at: root only (allow files, no deny files)"""
    st = os_state.stats(target, [*role.ALLOW_FILES, *role.DENY_FILES])
    for path, group in role.ALLOW_FILES.items():
        assert st.get(path) == ("root", group, 0o640), f"{path}: {st.get(path)}"
        assert [ln for ln in os_state.text(target, path).splitlines() if ln and not ln.startswith("#")] == ["root"]
    present = [p for p in role.DENY_FILES if p in st]
    assert not present, f"deny files present: {present}"


@pytest.mark.control("hk-os-acct-04")
def test_no_empty_passwords(target):
    """No account has an empty password"""
    empty = [row[0] for row in os_state.shadow(target) if len(row) > 1 and row[1] == ""]
    assert not empty, f"empty password: {', '.join(empty)}"


@pytest.mark.control("hk-os-acct-05")
def test_key_only_accounts_never_expire(target):
    """Login accounts without a password have no password expiry (a key login can never be refused)"""
    shells = {row[0]: row[6] for row in os_state.passwd(target) if len(row) > 6}
    wrong = []
    for row in os_state.shadow(target):
        name, hash_, max_days = row[0], row[1], row[4]
        can_login = shells.get(name, "") not in role.NOLOGIN_SHELLS and shells.get(name)
        if can_login and hash_[:1] in ("!", "*") and max_days not in ("", "-1"):
            wrong.append(f"{name} (max {max_days} days)")
    assert not wrong, "key-only accounts whose password would expire: " + ", ".join(wrong)
    admin = ADMIN_USER.value(target.data)
    row = next((r for r in os_state.shadow(target) if r[0] == admin), None)
    if row is not None:
        assert row[7] == "", f"the admin {admin} account expires (field {row[7]})"


@pytest.mark.control("hk-os-acct-06")
def test_session_umask(target):
    """Login sessions get umask 027"""
    got = target.check_output("umask").strip()
    assert got.lstrip("0") == role.LOGIN_DEFS["UMASK"].lstrip("0"), f"umask {got}"


@pytest.mark.control("hk-os-acct-07")
def test_private_homes(target):
    """Home folders of login accounts are 0750 or stricter"""
    homes = role.open_homes(target.check_output(role.HOMES_COMMAND).splitlines())
    assert not homes, f"too open: {', '.join(homes)}"


@pytest.mark.control("hk-os-acct-08")
def test_login_banner(target):
    """/etc/issue and /etc/issue.net show the inventory's legal warning (and nothing about the OS)"""
    want = role.LOGIN_BANNER.value(target.data).strip()
    texts = os_state.texts(target, role.BANNER_FILES)
    wrong = [p for p in role.BANNER_FILES if (texts[p] or "").strip() != want]
    assert not wrong, "not the inventory's banner: " + ", ".join(f"{p} = {(texts[p] or '')[:80]!r}" for p in wrong)


@pytest.mark.control("hk-os-acct-09")
def test_idle_shells_exit_and_dump_no_core(target):
    """A login shell gets a readonly idle timeout (TMOUT) and no core dumps"""
    got = target.check_output("sh -lc 'echo \"$TMOUT\"; ulimit -c; readonly -p | grep -c TMOUT; true'").split()
    assert got == [str(role.SHELL_IDLE_SECONDS.value(target.data)), "0", "1"], \
        f"TMOUT, core size limit, TMOUT readonly: {got}"


def _assert_stacks(target, expected: dict[str, list[str]]) -> None:
    """Each PAM stack file has each fragment on a line that is not a comment."""
    for stack, fragments in expected.items():
        text = os_state.text(target, f"/etc/pam.d/{stack}") or ""
        active = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        assert all(any(f in ln for ln in active) for f in fragments), f"{stack} lacks {fragments}"


@pytest.mark.control("hk-os-acct-10")
def test_password_quality_in_force(target):
    """PAM: every password set is checked for quality (pam_pwquality)"""
    _assert_stacks(target, role.PWQUALITY_EXPECTED)


@pytest.mark.control("hk-os-acct-11")
def test_sessions_get_a_private_tmpdir(target):
    """PAM: every session gets a private temporary folder (pam_tmpdir: TMPDIR=/tmp/user/UID, 0700)"""
    _assert_stacks(target, role.TMPDIR_EXPECTED)
    # In force, not only written: a real PAM session (root's su, which runs common-session) for the admin.
    admin = ADMIN_USER.value(target.data)
    got = target.check_output(f"su -s /bin/sh -c 'echo \"$TMPDIR\"; stat -c \"%U %a\" \"$TMPDIR\"; id -u' {admin}")
    tmpdir, owner, mode, uid = (got.split() + ["", "", "", ""])[:4]
    assert (tmpdir, owner, mode) == (f"{role.TMPDIR_PARENT}/{uid}", admin, "700"), \
        f"{admin}'s session: TMPDIR {tmpdir!r}, owner {owner!r}, mode {mode!r}"
