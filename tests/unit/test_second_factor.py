"""Second factor for people (issue 13) without a target: sshd's effective settings per login context
(`sshd -T -C` on the rendered config), the inventory checks, and `hardkit users add-totp`."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from deploy import totp_seeds
from deploy.inventory import Host
from deploy.secrets_store import SecretsError
from roles import admin, second_factor, ssh
from roles.second_factor_data import FIDO2_ALGORITHMS, KEYS, host_problems
from tests.unit.test_rendered_access import controller_algorithms, public_dir  # noqa: F401 (fixture)
from tests.unit.test_secrets_cli import Kit
from tests.unit.test_secrets_preflight import deploy as preflight_deploy, inventory as preflight_inventory
from tests.unit.test_secrets_preflight import listener, refused  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBu5y1Ybfk8NfDvEo/tLSPnwTh8zOcpHzLqIr0hz6xlS ops@controller"


def sk_public_key() -> str:
    """An sk-ssh-ed25519@openssh.com public key line (wire format of OpenSSH's PROTOCOL.u2f)."""
    def s(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    blob = s(FIDO2_ALGORITHMS[0].encode()) + s(raw) + s(b"ssh:")
    return f"{FIDO2_ALGORITHMS[0]} {base64.b64encode(blob).decode()} bob@yubikey"


DATA = {
    "admin_user": "ops", "admin_keys": [ED25519], "secrets_env": "prod",
    "ssh_allow_from": ["10.0.2.2/32", "198.51.100.0/24", "2001:db8:5100::/64"],
    "automation_from": ["10.0.2.2/32", "2001:db8:5100::10/128"],
    "second_factor_admins": {"alice": {"second_factor": "totp", "keys": [ED25519]},
                             "bob": {"second_factor": "fido2", "keys": [sk_public_key()]}},
}


def sshd_T(folder: Path, text: str, context: str) -> dict[str, str]:
    """`sshd -T -C context` of a rendered config: what sshd enforces for that login."""
    cfg = folder / "sshd_config"
    cfg.write_text(text.replace("Include /etc/ssh/sshd_config.d/*.conf", ""))
    key = folder / "hostkey"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    for f in folder.iterdir():
        f.chmod(0o644)
    cmd = ["sshd", "-T", "-f", str(cfg), "-h", str(key), "-C", context]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "nobody", "--", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)


@pytest.fixture
def rendered():
    return ssh.render_config(DATA, controller_algorithms())


@pytest.mark.parametrize("user,addr,methods", [
    ("ops", "10.0.2.2", "publickey"),  # the automation account from a controller: the key alone
    ("ops", "2001:db8:5100::10", "publickey"),
    ("ops", "198.51.100.7", "publickey,keyboard-interactive"),  # allow-listed, but not a controller
    ("alice", "10.0.2.2", "publickey,keyboard-interactive"),  # a person: key + TOTP, from anywhere
    ("alice", "198.51.100.7", "publickey,keyboard-interactive"),
    ("mallory", "10.0.2.2", "publickey,keyboard-interactive"),
])
def test_only_the_automation_account_from_a_controller_skips_the_second_factor(public_dir, rendered, user, addr,
                                                                              methods):
    got = sshd_T(public_dir, rendered, f"user={user},host=c,addr={addr}")
    assert got["authenticationmethods"] == methods
    # The checks' model of the Match blocks (roles.ssh.settings_for_login) agrees with sshd itself.
    model = dict(ssh.settings_for_login(DATA, user, addr))
    differ = {k: (v, got[k.lower()]) for k, v in model.items()
              if k.lower() in got and k != "Port" and got[k.lower()].lower() != v.lower()}
    assert not differ and model["AuthenticationMethods"] == methods, differ
    assert got["passwordauthentication"] == "no" and got["permitemptypasswords"] == "no"


def test_fido2_admin_needs_a_verified_security_key(public_dir, rendered):
    got = sshd_T(public_dir, rendered, "user=bob,host=c,addr=198.51.100.7")
    assert got["pubkeyacceptedalgorithms"] == ",".join(FIDO2_ALGORITHMS)
    assert got["pubkeyauthoptions"] == "verify-required"
    assert got["authenticationmethods"] == "publickey"
    assert second_factor.person_keys_text(DATA["second_factor_admins"]["bob"]).startswith("verify-required sk-ssh")


def test_without_people_sshd_stays_key_only_and_unchanged(public_dir):
    plain = {k: v for k, v in DATA.items() if k not in ("second_factor_admins", "automation_from")}
    text = ssh.render_config(plain, controller_algorithms())
    assert not any(line.startswith("Match") for line in text.splitlines())
    assert text.rstrip().endswith("Include /etc/ssh/sshd_config.d/*.conf")
    got = sshd_T(public_dir, text, "user=ops,host=c,addr=198.51.100.7")
    assert (got["authenticationmethods"], got["kbdinteractiveauthentication"]) == ("publickey", "no")
    assert admin.admin_authorized_keys_text(plain) == ED25519 + "\n"


def test_automation_keys_work_only_from_the_controllers():
    assert admin.admin_authorized_keys_text(DATA) == f'from="10.0.2.2/32,2001:db8:5100::10/128" {ED25519}\n'
    # automation_from unset: the whole allow-list
    assert admin.admin_authorized_keys_text({**DATA, "automation_from": None}).startswith(
        'from="10.0.2.2/32,198.51.100.0/24,2001:db8:5100::/64" ')


def test_pam_asks_for_the_code_and_never_a_password():
    text = second_factor.pam_sshd_text()
    auth = [re.search(r"pam_\w+\.so", line).group() for line in text.splitlines() if line.startswith("auth")]
    assert auth == ["pam_faillock.so", "pam_oath.so", "pam_faillock.so", "pam_faillock.so", "pam_deny.so"]
    assert "common-auth" not in text
    assert f"usersfile={second_factor.USERS_FILE}" in second_factor.pam_sshd_text()


def test_the_pam_stack_goes_live_with_sshd_config_under_the_guard():
    plain = {k: v for k, v in DATA.items() if k not in ("second_factor_admins", "automation_from")}
    on = ssh.change_contents(DATA, controller_algorithms(), [22])
    assert on[second_factor.PAM_SSHD] == second_factor.pam_sshd_text() and ssh.SSHD_CONFIG in on
    assert second_factor.pam_validate_command() in ssh.change_validators(DATA)
    # 2FA off: the guarded change is sshd_config alone (the PAM stack is left as it is).
    assert list(ssh.change_contents(plain, controller_algorithms(), [22])) == [ssh.SSHD_CONFIG]
    assert second_factor.pam_validate_command() not in ssh.change_validators(plain)


def run_pam_check(staged: Path, text: str) -> subprocess.CompletedProcess:
    """The guard's PAM validator on a stack staged under `staged`, against this Debian's installed modules."""
    path = staged / second_factor.PAM_SSHD.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return subprocess.run(["sh", "-c", second_factor.pam_validate_command().format(staged=staged)],
                          capture_output=True, text=True, timeout=30)


def test_the_pam_validator_refuses_a_missing_module_or_include(tmp_path):
    # Our stack with pam_oath (which libpam-oath installs first on the host) swapped for a module this
    # machine has: every other module and include of it exists on Debian 12, so it passes.
    ours = second_factor.pam_sshd_text().replace("pam_oath.so", "pam_permit.so")
    assert run_pam_check(tmp_path / "a", ours).returncode == 0
    assert run_pam_check(tmp_path / "b", ours + "# auth required pam_commented_out.so\n").returncode == 0
    missing = run_pam_check(tmp_path / "c", second_factor.pam_sshd_text().replace("pam_oath.so", "pam_hk_nosuch.so"))
    assert missing.returncode == 1 and "PAM module pam_hk_nosuch.so is not installed" in missing.stderr
    include = run_pam_check(tmp_path / "d", ours + "@include hk-no-such-stack\n")
    assert include.returncode == 1 and "/etc/pam.d/hk-no-such-stack, which does not exist" in include.stderr


def test_inventory_problems_are_all_listed():
    check = next(k for k in KEYS if k.name == "second_factor_admins").check
    why = check({"Alice": {"second_factor": "sms", "keys": []},
                 "carol": {"second_factor": "fido2", "keys": [ED25519], "phone": "x"},
                 "dave": {"second_factor": "sms", "keys": [ED25519]},
                 "hardkit-bot": {"second_factor": "totp", "keys": [ED25519]},
                 "www-data": {"second_factor": "totp", "keys": [ED25519]}})
    lines = why.splitlines()
    for part in ("'Alice' is not a valid user name", "unknown field(s) phone",
                 "a fido2 admin's keys must be sk-ssh-ed25519@openssh.com", "dave: second_factor must be",
                 "'hardkit-bot' is a system or hardkit account", "'www-data' is a system or hardkit account"):
        assert sum(part in line for line in lines) == 1, why
    assert len(lines) == 6, why
    fit = host_problems({**DATA, "second_factor_admins": {"ops": {"second_factor": "totp", "keys": [ED25519]}},
                         "secrets_env": None, "automation_from": ["203.0.113.1/32"]})
    assert len(fit) == 3, fit
    assert any("automation account" in p for p in fit) and any("no secrets_env" in p for p in fit)
    assert any("outside ssh_allow_from" in p for p in fit)
    assert host_problems(DATA) == []


def test_missing_seeds_are_reported_before_any_host_is_touched():
    hosts = [Host("vps-1", [], DATA)]
    with pytest.raises(SecretsError) as e:
        totp_seeds.wanted_seeds(hosts, {"vps-1": {}})
    assert "hardkit users add-totp alice --env prod" in str(e.value)
    seed = totp_seeds.new_seed()
    got = totp_seeds.wanted_seeds(hosts, {"vps-1": {"totp-alice": seed.encode()}})
    assert got == {"vps-1": {"totp-alice": totp_seeds.seed_bytes(seed).hex().encode()}}


# --- hardkit users add-totp ------------------------------------------------------------------------

def run_on_tty(args: list[str], env: dict) -> str:
    """Run the CLI on a pseudo-terminal (as an operator does); everything it shows."""
    line = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "deploy.cli", *args])
    res = subprocess.run(["script", "-qec", line, "/dev/null"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    return res.stdout.replace("\r", "")


@pytest.fixture
def secrets_env(tmp_path):
    env = {**os.environ, "HARDKIT_SECRETS_DIR": str(tmp_path / "secrets"),
           "HARDKIT_AGE_IDENTITY": str(tmp_path / "id.txt")}
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "secrets", "init", "prod"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return env


def test_add_totp_shows_a_qr_and_uri_once_and_stores_the_seed_encrypted(secrets_env, tmp_path):
    shown = run_on_tty(["users", "add-totp", "alice", "--env", "prod", "--issuer", "vps-1"], secrets_env)
    uri = next(line for line in shown.splitlines() if line.startswith("otpauth://"))
    parsed = urlparse(uri)
    assert (parsed.netloc, parsed.path) == ("totp", "/vps-1:alice")
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    assert (query["digits"], query["period"], query["algorithm"], query["issuer"]) == ("6", "30", "SHA1", "vps-1")
    assert "█" in shown or "▀" in shown, "a QR code drawn in the terminal"
    stored = tmp_path / "secrets" / "prod" / "totp-alice.age"
    assert query["secret"].encode() not in stored.read_bytes()
    clear = subprocess.run(["age", "-d", "-i", secrets_env["HARDKIT_AGE_IDENTITY"], str(stored)],
                           capture_output=True, check=True).stdout
    assert clear.decode() == query["secret"]
    # The app and the host compute the same codes from it (RFC 6238 via cryptography).
    code = TOTP(totp_seeds.seed_bytes(query["secret"]), 6, SHA1(), 30).generate(time.time())
    assert len(code) == 6 and code.isdigit()

    again = subprocess.run([sys.executable, "-m", "deploy.cli", "users", "add-totp", "alice", "--env", "prod",
                            "--to-pipe"], cwd=REPO, env=secrets_env, capture_output=True, text=True)
    assert again.returncode == 2 and "--replace" in again.stderr and "Traceback" not in again.stderr
    assert stored.read_bytes() and clear == subprocess.run(
        ["age", "-d", "-i", secrets_env["HARDKIT_AGE_IDENTITY"], str(stored)], capture_output=True).stdout

    replaced = run_on_tty(["users", "add-totp", "alice", "--env", "prod", "--replace"], secrets_env)
    new_seed = parse_qs(urlparse(next(line for line in replaced.splitlines()
                                      if line.startswith("otpauth://"))).query)["secret"][0]
    assert new_seed != query["secret"]


def test_add_totp_refuses_a_pipe_and_bad_input_all_at_once(secrets_env):
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "users", "add-totp", "Root!", "--env", "nope"],
                         cwd=REPO, env=secrets_env, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert "not a terminal" in res.stderr and "valid Linux user name" in res.stderr and "'nope'" in res.stderr


def test_deploy_without_a_seed_stops_before_any_host_is_touched(tmp_path, listener):
    """A totp admin whose seed is missing: exit 2, one line saying which command enrols them, no connection."""
    kit = Kit(tmp_path)
    assert kit.run("init", "prod").returncode == 0
    person = {"alice": {"second_factor": "totp", "keys": [ED25519]}}
    port, seen = listener
    res = preflight_deploy(kit, preflight_inventory(tmp_path, port, secrets_env="prod", second_factor_admins=person))
    refused(res, 1, "no TOTP seed for alice", "hardkit users add-totp alice --env prod")
    assert seen == [], "no host may be contacted"


OTHER_LINE = "HOTP/T30/6\tcarol\t-\t" + "ab" * 20 + "\t4\t2026-12-05T04:00:00L\n"


def _login_rewrites_from_a_stale_copy(path: Path, stale: str, seconds: float) -> subprocess.Popen:
    """What pam_oath does at a login: it read the file before we replaced it, then renames its rewrite of
    that old copy over ours (liboath usersfile.c). Here: again and again for `seconds`."""
    loop = (f"end=$(( $(date +%s%N) + {int(seconds * 1e9)} )); while [ $(date +%s%N) -lt $end ]; do "
            f"printf '%s' {shlex.quote(stale)} > {path}.new && mv -f {path}.new {path}; sleep 0.05; done")
    return subprocess.Popen(["sh", "-c", loop])


def test_a_seed_written_while_logins_rewrite_the_file_is_written_again(tmp_path):
    users = tmp_path / "users.oath"
    stale = OTHER_LINE + "HOTP/T30/6\talice\t-\t" + "00" * 20 + "\n"
    users.write_text(stale)
    new_seed = "cd" * 20
    login = _login_rewrites_from_a_stale_copy(users, stale, 1.5)
    try:
        res = subprocess.run(["sh", "-c", totp_seeds._write("totp-alice", str(users))], input=new_seed + "\n",
                             capture_output=True, text=True, timeout=60)
    finally:
        login.wait(timeout=30)
    assert res.returncode == 0, res.stderr
    lines = users.read_text().splitlines()
    assert lines[0] + "\n" == OTHER_LINE and lines[1].split("\t") == ["HOTP/T30/6", "alice", "-", new_seed]
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    # Removing alice is checked the same way; carol's line and its record of her last code stay.
    login = _login_rewrites_from_a_stale_copy(users, stale, 1.5)
    try:
        gone = subprocess.run(["sh", "-c", totp_seeds._remove("totp-alice", str(users))], capture_output=True,
                              text=True, timeout=60)
    finally:
        login.wait(timeout=30)
    assert gone.returncode == 0 and users.read_text() == OTHER_LINE, (gone.stderr, users.read_text())


def test_a_write_that_logins_keep_undoing_fails_and_says_so(tmp_path):
    users = tmp_path / "users.oath"
    stale = "HOTP/T30/6\talice\t-\t" + "00" * 20 + "\n"
    users.write_text(stale)
    login = _login_rewrites_from_a_stale_copy(users, stale, 1 + totp_seeds.REWRITE_TRIES * 1.5)
    try:
        res = subprocess.run(["sh", "-c", totp_seeds._write("totp-alice", str(users))], input="cd" * 20 + "\n",
                             capture_output=True, text=True, timeout=60)
    finally:
        login.wait(timeout=60)
    assert res.returncode == 1 and "alice's line was put back by concurrent logins" in res.stderr, res.stderr
