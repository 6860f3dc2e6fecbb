"""Two factors for people, the key alone for automation (issue 13), on one lab target.

One lab, two deploys: the first (as root, on a fresh target) turns 2FA on for a TOTP admin and a
FIDO2 admin; the second re-enrols the TOTP admin (a lost phone) while the automation account is
locked by faillock, and must still run unattended. TOTP logins are driven with paramiko from the
lab's allowed and attacker client namespaces; codes are computed here with cryptography's TOTP.
The FIDO2 admin logs in with the real ssh client and a software security key (tests/fido): OpenSSH
does the whole protocol, only the authenticator is software. A negative control runs a second sshd on
the target (inetd mode, over the automation account's session) with the live config minus
`verify-required`, to show that this option alone is what refuses a key that only saw a touch.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from deploy import connect, credentials, totp_seeds
from deploy.inventory import load
from roles.guard import FAULT_ENV, GUARD_BIN
from roles.admin import SSH_GROUP
from roles.people_access import PEOPLE_SUDOERS
from roles.second_factor import PAM_SSHD, USERS_FILE, pam_sshd_text
from roles.ssh import SSHD_CONFIG
from roles.second_factor_data import TOTP_DIGITS, TOTP_STEP_SECONDS
from sandbox import keys, lab as sandbox_lab, network
from tests.fido import soft_key
from tests.integration.labkit import REPO_ROOT, boot, hardkit

pytestmark = pytest.mark.lab
PREFIX = "fido"
ENV = "tf2fa"
PERSON, FIDO_PERSON = "alice", "bob"
#: The PIN of bob's software security key.
FIDO_PIN = "2468"
#: Where the negative control's sshd_config and authorized_keys live on the target (root-owned, not /tmp:
#: sshd's StrictModes refuses a world-writable parent).
CONTROL_DIR = "/run/hardkit-fido-control"


def code_at(seed: str, when: float) -> str:
    return TOTP(totp_seeds.seed_bytes(seed), TOTP_DIGITS, SHA1(), TOTP_STEP_SECONDS).generate(when).decode()


def enrol(replace: bool = False) -> str:
    """`hardkit users add-totp` on a terminal, as an operator runs it; the seed read back from its URI."""
    args = [sys.executable, "-m", "deploy.cli", "users", "add-totp", PERSON, "--env", ENV, "--issuer", "tf-lab"]
    res = subprocess.run(["script", "-qec", shlex.join(args + (["--replace"] if replace else [])), "/dev/null"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    uri = next(line.strip() for line in res.stdout.splitlines() if line.strip().startswith("otpauth://"))
    return parse_qs(urlparse(uri).query)["secret"][0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twofa")
    saved = {k: os.environ.get(k) for k in ("HARDKIT_SECRETS_DIR", "HARDKIT_AGE_IDENTITY")}
    os.environ.update(HARDKIT_SECRETS_DIR=str(tmp / "secrets"), HARDKIT_AGE_IDENTITY=str(tmp / "id.txt"))
    handle = None
    try:
        assert hardkit("secrets", "init", ENV).returncode == 0
        person_key = tmp / "alice_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(person_key)], check=True)
        seed = enrol()
        sk_lib = soft_key.build(tmp)
        sk_pub = soft_key.enrol(sk_lib, tmp / "bob_ed25519_sk", FIDO_PIN, comment="bob@soft-fido2")
        # bob's second key never asks for a touch: his authorized_keys lacks no-touch-required, so sshd refuses it.
        no_touch_pub = soft_key.enrol(sk_lib, tmp / "bob_ed25519_sk_notouch", FIDO_PIN, comment="bob@soft-notouch",
                                      touch=False)
        handle = boot(PREFIX, count=1)
        data = handle.host_data(handle.names[0])
        attacker = data["lab"]["clients"]["attacker"]
        inv = handle.variant(
            tmp / "inventory.py", secrets_env=ENV,
            # The attacker may reach sshd (it is allow-listed here), so only 2FA and from= stand in its way.
            ssh_allow_from=data["ssh_allow_from"] + [f"{attacker['v4']}/32", f"{attacker['v6']}/128"],
            automation_from=data["ssh_allow_from"],
            second_factor_admins={PERSON: {"second_factor": "totp", "keys": [str(person_key) + ".pub"]},
                                  FIDO_PERSON: {"second_factor": "fido2", "keys": [str(sk_pub), str(no_touch_pub)]}})
        # A first deploy whose sshd change (the one that turns 2FA on) no fresh login confirms: it fails there.
        os.environ[FAULT_ENV] = "confirm-fails:ssh"
        try:
            unconfirmed = hardkit("deploy", str(inv), "--json")
        finally:
            os.environ.pop(FAULT_ENV, None)
        assert unconfirmed.returncode != 0 and "fresh SSH login" in unconfirmed.stdout, unconfirmed.stdout[-2000:]
        left = handle.ssh(handle.names[0], f"id -nG {PERSON}; getent group {SSH_GROUP}; ls /etc/sudoers.d").stdout
        first = hardkit("deploy", str(inv), "--json")
        assert first.returncode == 0, first.stderr[-4000:]
        yield {"lab": handle, "name": handle.names[0], "inv": inv, "seed": seed, "key": str(person_key),
               "unconfirmed": unconfirmed, "left": left, "first": first, "tmp": tmp, "sk_lib": sk_lib,
               "sk_key": str(tmp / "bob_ed25519_sk"), "sk_notouch": str(tmp / "bob_ed25519_sk_notouch")}
    finally:
        if handle:
            handle.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def login(lab, client: str, user: str, family: int = 4, **how) -> dict:
    """One login attempt from a client namespace (tests/integration/ssh_2fa_client.py), over IPv4 or IPv6."""
    h = lab["lab"]
    args = [sys.executable, "-m", "tests.integration.ssh_2fa_client", h.lab_address(lab["name"], family), user]
    for option, value in how.items():
        args += [f"--{option.replace('_', '-')}"] + ([] if value is True else [str(value)])
    res = h.from_client(client, args, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def variant(lab, folder, change: str):
    """The lab's inventory with one Python statement about each host's data `_d` added at its end."""
    inv = folder / "inventory.py"
    inv.write_text(lab["inv"].read_text() + f"\nfor _name, _d in sandbox:\n    {change}\n")
    return inv


def root(lab, command: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
    return lab["lab"].ssh(lab["name"], command, timeout=timeout, stdin=stdin)


def test_people_get_no_ssh_login_or_sudo_before_sshd_asks_them_for_two_factors(lab):
    """The deploy that failed at the 2FA sshd change had made alice's account and keys, not more."""
    groups, ssh_group, sudoers = lab["left"].splitlines()[0], lab["left"].splitlines()[1], lab["left"].splitlines()[2:]
    assert groups.split() == [PERSON] and PERSON not in ssh_group.split(":")[3].split(","), lab["left"]
    assert PEOPLE_SUDOERS.rsplit("/", 1)[1] not in sudoers, lab["left"]
    # Once it is in force, they are in.
    held = root(lab, f"id -nG {PERSON}; test -f {PEOPLE_SUDOERS} && echo sudoers").stdout.split()
    assert SSH_GROUP in held and "sudoers" in held, held


def test_seed_reaches_the_root_only_file_and_no_output(lab):
    unconfirmed, first = lab["unconfirmed"], lab["first"]
    # Sent by the first deploy, before pyinfra ran; the next found it unchanged.
    assert json.loads(unconfirmed.stdout)["hosts"][lab["name"]]["totp_seeds"] == {"sent": ["totp-alice"],
                                                                                  "removed": []}
    assert json.loads(first.stdout)["hosts"][lab["name"]]["totp_seeds"] == {"sent": [], "removed": []}
    hexseed = totp_seeds.seed_bytes(lab["seed"]).hex()
    for secret in (lab["seed"], hexseed):
        assert secret not in unconfirmed.stdout + unconfirmed.stderr + first.stdout + first.stderr
    listing = root(lab, f"stat -c '%U %G %a' {USERS_FILE}; awk '{{print $1, $2, $3}}' {USERS_FILE}").stdout
    assert listing.splitlines() == ["root root 600", "HOTP/T30/6 alice -"], listing
    # Unchanged: the keyed digest on the host says so, and nothing is sent again.
    inv = load(lab["inv"])
    h = inv.hosts[0]
    values = credentials.wanted_values(inv.hosts)
    again, errors = credentials.sync_all(inv.hosts, {h.name: connect.resolve(h)},
                                         totp_seeds.wanted_seeds(inv.hosts, values), dry=True,
                                         store=totp_seeds.STORE)
    assert not errors and again[h.name].changed == []


def test_key_alone_is_refused_for_a_totp_admin(lab):
    got = login(lab, "allowed", PERSON, key=lab["key"])
    assert not got["authenticated"] and got["remaining"] == ["keyboard-interactive"], got


def test_key_and_valid_code_log_in_once(lab):
    now = time.time()
    code = code_at(lab["seed"], now)
    got = login(lab, "allowed", PERSON, key=lab["key"], code=code)
    assert got["authenticated"] and got["stdout"].split() == [PERSON, "sudo-ok"], got
    assert any("One-time password" in p for p in got["prompts"]), got["prompts"]
    reused = login(lab, "allowed", PERSON, key=lab["key"], code=code)
    assert not reused["authenticated"], "a code must not be accepted twice"


def test_stale_and_wrong_codes_are_refused(lab):
    now = time.time()
    stale = code_at(lab["seed"], now - 10 * TOTP_STEP_SECONDS)
    near = {code_at(lab["seed"], now + k * TOTP_STEP_SECONDS) for k in (-2, -1, 0, 1, 2)}
    wrong = next(c for c in (f"{(int(stale) + i) % 10**6:06d}" for i in range(1, 20)) if c not in near)
    for code in (stale, wrong):
        got = login(lab, "allowed", PERSON, key=lab["key"], code=code)
        assert not got["authenticated"] and got["refused"], (code, got)
    counted = root(lab, f"faillock --user {PERSON} | grep -c ' V$'; faillock --user {PERSON} --reset").stdout
    assert int(counted.split()[0]) >= 2, f"wrong codes must count towards faillock: {counted}"


def test_password_or_code_without_a_key_never_works(lab):
    for user in (PERSON, "ops"):
        got = login(lab, "allowed", user, password="anything")
        assert not got["authenticated"] and "['publickey']" in got["refused"], got
    got = login(lab, "allowed", PERSON, interactive_first=True, code=code_at(lab["seed"], time.time()))
    assert not got["authenticated"] and "['publickey']" in got["refused"], got


def fido_login(lab, device_pin: str | None, key: str | None = None) -> subprocess.CompletedProcess:
    """bob logs in with the real ssh client and his security key; he types the right PIN when asked."""
    h = lab["lab"]
    return h.client_ssh("allowed", FIDO_PERSON, h.lab_address(lab["name"]), *soft_key.ssh_options(lab["sk_lib"]),
                        key=key or lab["sk_key"], command="id -un", timeout=30,
                        env=soft_key.env(lab["sk_lib"], device_pin, typed_pin=FIDO_PIN))


def fingerprint(private_key: str) -> str:
    """The SHA256 fingerprint sshd logs for this key."""
    out = subprocess.run(["ssh-keygen", "-l", "-f", private_key + ".pub"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def sshd_lines(text: str, private_key: str) -> list[str]:
    """The log lines about one key (by fingerprint)."""
    fp = fingerprint(private_key)
    return [line for line in text.splitlines() if fp in line]


def test_fido2_key_that_verified_the_user_logs_in(lab):
    got = fido_login(lab, device_pin=FIDO_PIN)
    assert got.returncode == 0 and got.stdout.split() == [FIDO_PERSON], got.stderr
    journal = root(lab, "journalctl -u ssh --no-pager -n 300 -g 'Accepted publickey for bob'").stdout
    assert "ED25519-SK" in journal, journal


def test_fido2_key_that_did_not_verify_the_user_is_refused(lab):
    """The same key on a device that only saw a touch (no PIN): sshd itself refuses the signature."""
    got = fido_login(lab, device_pin=None)
    assert got.returncode == 255 and "Permission denied" in got.stderr, (got.stdout, got.stderr)
    journal = root(lab, "journalctl -u ssh --no-pager -n 300 -g 'signature for bob'").stdout
    assert "ED25519-SK" in journal and "user verification requirement not met" in journal, journal


def test_fido2_key_that_skips_the_touch_is_refused(lab):
    """bob's key enrolled with no-touch-required signs with his PIN but without user presence: refused."""
    got = fido_login(lab, device_pin=FIDO_PIN, key=lab["sk_notouch"])
    assert got.returncode == 255 and "Permission denied" in got.stderr, (got.stdout, got.stderr)
    lines = sshd_lines(root(lab, "journalctl -u ssh --no-pager -n 300 -g 'signature for bob'").stdout,
                       lab["sk_notouch"])
    assert lines and all("user presence (authenticator touch) requirement not met" in line for line in lines), lines


def control_login(lab, device_pin: str | None, key: str) -> subprocess.CompletedProcess:
    """bob logs in to the control sshd: `sshd -i` on the target, reached through the admin's SSH session
    (ProxyCommand), reading CONTROL_DIR/sshd_config and logging to CONTROL_DIR/log."""
    h = lab["lab"]
    login = h.login(lab["name"])
    sshd = f"/usr/sbin/sshd -i -f {CONTROL_DIR}/sshd_config -E {CONTROL_DIR}/log"
    proxy = shlex.join(sandbox_lab.ssh_command(lab["name"], [f"sudo -n {sshd}" if login.sudo else sshd],
                                               user=login.user, port=login.port)).replace("%", "%%")
    cmd = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", f"ProxyCommand={proxy}",
           *soft_key.ssh_options(lab["sk_lib"]), "-i", key, "-o", "IdentitiesOnly=yes",
           f"{FIDO_PERSON}@control", "id -un"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env=soft_key.env(lab["sk_lib"], device_pin, typed_pin=FIDO_PIN))


def test_verify_required_alone_refuses_the_key_that_only_saw_a_touch(lab):
    """Negative control: a second sshd on the target with the live sshd_config and bob's authorized_keys,
    each minus `verify-required` and nothing else, lets the presence-only signature in; the same sshd still
    refuses the key that skips the touch. So the refusal above is verify-required's doing."""
    live = root(lab, f"cat {SSHD_CONFIG}").stdout
    keys_now = root(lab, f"cat /home/{FIDO_PERSON}/.ssh/authorized_keys").stdout
    rule = [line for line in live.splitlines() if line.split() == ["PubkeyAuthOptions", "verify-required"]]
    assert len(rule) == 1 and all(line.startswith("verify-required sk-ssh-ed25519@openssh.com ")
                                  for line in keys_now.splitlines() if line.strip()), (rule, keys_now)
    config = "\n".join([f"AuthorizedKeysFile {CONTROL_DIR}/%u"] +
                       [line for line in live.splitlines() if line not in rule]) + "\n"
    control_keys = "".join(line.removeprefix("verify-required ") + "\n" for line in keys_now.splitlines())
    try:
        made = root(lab, f"install -d -o root -g root -m 0755 {CONTROL_DIR} && "
                         f"cat > {CONTROL_DIR}/sshd_config && sshd -t -f {CONTROL_DIR}/sshd_config", stdin=config)
        assert made.returncode == 0, made.stderr
        made = root(lab, f"cat > {CONTROL_DIR}/{FIDO_PERSON} && chmod 0644 {CONTROL_DIR}/{FIDO_PERSON}",
                    stdin=control_keys)
        assert made.returncode == 0, made.stderr
        touch_only = control_login(lab, device_pin=None, key=lab["sk_key"])
        no_touch = control_login(lab, device_pin=FIDO_PIN, key=lab["sk_notouch"])
        log = root(lab, f"cat {CONTROL_DIR}/log").stdout
        assert touch_only.returncode == 0 and touch_only.stdout.split() == [FIDO_PERSON], (touch_only.stderr, log)
        assert any("Accepted publickey for bob" in line for line in sshd_lines(log, lab["sk_key"])), log
        assert no_touch.returncode == 255 and "Permission denied" in no_touch.stderr, (no_touch.stderr, log)
        assert any("user presence (authenticator touch) requirement not met" in line
                   for line in sshd_lines(log, lab["sk_notouch"])), log
    finally:
        root(lab, f"rm -rf {CONTROL_DIR}")


def test_automation_key_is_refused_from_the_attacker_even_with_the_right_key(lab):
    key = str(keys.operator_key())
    assert login(lab, "allowed", "ops", key=key)["authenticated"], "control: the allowed client is a controller"
    assert login(lab, "allowed", "ops", family=6, key=key)["authenticated"], "control: and over IPv6"
    for family in (4, 6):
        got = login(lab, "attacker", "ops", family=family, key=key)
        assert not got["authenticated"] and got["refused"], (family, got)
        got = login(lab, "attacker", "ops", family=family, key=key, code="123456")
        assert not got["authenticated"], (family, got)
    log = root(lab, "journalctl -u ssh --no-pager -n 200").stdout
    assert network.ATTACKER_V4 in log and network.ATTACKER_V6 in log, log


def test_deploy_is_refused_from_a_controller_outside_automation_from(lab, tmp_path):
    inv = variant(lab, tmp_path, f"_d['automation_from'] = ['{network.ALLOWED_V4}/32']")
    before = root(lab, "sha256sum /etc/ssh/sshd_config /home/ops/.ssh/authorized_keys").stdout
    res = hardkit("deploy", str(inv), "--json")
    out = json.loads(res.stdout)
    assert res.returncode != 0 and not any(out["pyinfra"]), "pyinfra must not even start"
    why = out["hosts"][lab["name"]]["refused"]
    assert "not in automation_from" in why and network.CONTROLLER_V4 in why, why
    assert root(lab, "sha256sum /etc/ssh/sshd_config /home/ops/.ssh/authorized_keys").stdout == before


def test_the_pam_stack_is_part_of_the_guarded_sshd_change(lab, tmp_path, monkeypatch):
    """sshd's PAM stack goes live with sshd_config under the guard: a change no fresh login confirms is put
    back by the host, PAM stack included, and the next deploy converges."""
    applied = root(lab, "journalctl -t hardkit-guard --no-pager -g 'change ssh applied'").stdout
    assert PAM_SSHD in applied and SSHD_CONFIG in applied, applied
    drifted = root(lab, f"echo '# edited by hand' >> {PAM_SSHD} && sha256sum {PAM_SSHD} {SSHD_CONFIG}").stdout
    inv = variant(lab, tmp_path, "_d['guard_revert_seconds'] = 15")
    started = time.monotonic()
    monkeypatch.setenv(FAULT_ENV, "confirm-fails:ssh")
    res = hardkit("deploy", str(inv), "--json")
    monkeypatch.delenv(FAULT_ENV)
    assert res.returncode != 0 and "fresh SSH login" in res.stdout + res.stderr, res.stderr[-2000:]
    while time.monotonic() < started + 90:
        if root(lab, f"{GUARD_BIN} pending").stdout.strip() == "":
            break
        time.sleep(2)
    assert root(lab, f"sha256sum {PAM_SSHD} {SSHD_CONFIG}").stdout == drifted, "the host must put the old stack back"
    assert "change ssh reverted" in root(lab, "journalctl -t hardkit-guard --no-pager -n 20").stdout
    again = hardkit("deploy", str(lab["inv"]), "--json")
    assert again.returncode == 0, again.stderr[-4000:]
    assert root(lab, f"cat {PAM_SSHD}").stdout == pam_sshd_text()


def test_a_person_taken_off_the_list_is_locked_out_and_back_when_listed_again(lab, tmp_path):
    """bob leaves: his account is closed (no shell, expired, no keys, his processes ended, no SSH group or
    sudo) and his security key no longer opens the host; listed again, it does."""
    session = root(lab, f"runuser -u {FIDO_PERSON} -- setsid sleep 900 >/dev/null 2>&1 < /dev/null & "
                        f"sleep 1; pgrep -u {FIDO_PERSON} -x sleep")
    assert session.stdout.split(), session.stderr
    inv = variant(lab, tmp_path, "_d['second_factor_admins'] = "
                  f"{{k: v for k, v in _d['second_factor_admins'].items() if k != '{FIDO_PERSON}'}}")
    res = hardkit("deploy", str(inv), "--json")
    assert res.returncode == 0, res.stderr[-4000:]
    state = root(lab, f"getent passwd {FIDO_PERSON} | cut -d: -f7; getent shadow {FIDO_PERSON} | cut -d: -f8; "
                      f"id -nG {FIDO_PERSON}; ls -A /home/{FIDO_PERSON}/.ssh | wc -l; grep -c '^{FIDO_PERSON} ' {PEOPLE_SUDOERS}; "
                      f"pgrep -u {FIDO_PERSON} | wc -l").stdout.splitlines()
    assert state[:3] == ["/usr/sbin/nologin", "1", FIDO_PERSON], state
    assert state[3:] == ["0", "0", "0"], state
    got = fido_login(lab, device_pin=FIDO_PIN)
    assert got.returncode == 255 and "Permission denied" in got.stderr, (got.stdout, got.stderr)
    # Closed is closed: the next deploy changes nothing.
    again = hardkit("deploy", str(inv), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["hosts"][lab["name"]]["changed"] == [], again.stdout
    back = hardkit("deploy", str(lab["inv"]), "--json")
    assert back.returncode == 0, back.stderr[-4000:]
    got = fido_login(lab, device_pin=FIDO_PIN)
    assert got.returncode == 0 and got.stdout.split() == [FIDO_PERSON], got.stderr


def test_lost_phone_reenrolment_runs_unattended_with_the_admin_locked_by_faillock(lab):
    """The operator re-enrols alice with the automation key while faillock has locked the admin's PAM logins:
    deploy and verify still run without a prompt, the old seed stops working and the new one works."""
    failures = root(lab, "apt-get install -y -q pamtester >/dev/null 2>&1 && for i in 1 2 3 4 5 6 7; do "
                         "echo 000000 | pamtester sshd ops authenticate; done; faillock --user ops | grep -c ' V$'",
                    timeout=300)
    assert int(failures.stdout.split()[-1]) >= 5, failures.stdout + failures.stderr
    try:
        old, new = lab["seed"], enrol(replace=True)
        res = hardkit("deploy", str(lab["inv"]), "--json")
        assert res.returncode == 0, res.stderr[-4000:]
        host = json.loads(res.stdout)["hosts"][lab["name"]]
        assert host["login"] == "ops (sudo)" and host["changed"] == [], host
        assert host["totp_seeds"] == {"sent": ["totp-alice"], "removed": []}
        report = lab["tmp"] / "report"
        verified = hardkit("verify", str(lab["inv"]), "--report-dir", str(report))
        assert verified.returncode == 0, verified.stdout[-4000:]
        rows = json.loads((report / "compliance.json").read_text())["controls"]
        assert {r["control"]: r["status"] for r in rows if r["control"].startswith("hk-2fa-")} == {
            f"hk-2fa-0{i}": "PASS" for i in range(1, 6)}
        now = time.time()
        refused = login(lab, "allowed", PERSON, key=lab["key"], code=code_at(old, now))
        accepted = login(lab, "allowed", PERSON, key=lab["key"], code=code_at(new, now))
        assert not refused["authenticated"] and accepted["authenticated"], (refused, accepted)
    finally:
        root(lab, "faillock --user ops --reset; apt-get purge -y -q pamtester >/dev/null 2>&1; true", timeout=300)
