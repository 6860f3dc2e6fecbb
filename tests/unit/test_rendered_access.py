"""The access roles' rendered configs, checked by the real validators on this machine.

Offline forms from tooling-notes: sshd -t as nobody with an ephemeral host key, nft -c in a
throwaway network namespace, fail2ban-client -t on a copy of /etc/fail2ban, visudo -cf,
systemd-analyze verify. Each also gets a broken variant, to prove the validator really rejects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from roles import admin, fail2ban, firewall, ssh
from roles.guard import BOOT_UNIT, TEMPLATES as GUARD_TEMPLATES

DATA = {
    "admin_user": "ops", "ssh_allow_from": ["10.0.2.2/32", "198.51.100.0/24", "2001:db8:5100::10/128"],
    "sshd_port": 22,
}


@pytest.fixture
def public_dir():
    """A folder `nobody` can read (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="hardkit-validate-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def controller_algorithms() -> dict[str, list[str]]:
    return {q: subprocess.run(["ssh", "-Q", q], capture_output=True, text=True, check=True).stdout.split()
            for q in set(ssh.QUERY_FOR.values())}


def sshd_t(folder: Path, text: str) -> subprocess.CompletedProcess:
    cfg = folder / "sshd_config"
    cfg.write_text(text.replace("Include /etc/ssh/sshd_config.d/*.conf", ""))
    key = folder / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    for f in folder.iterdir():
        f.chmod(0o644)
    cmd = ["sshd", "-t", "-f", str(cfg), "-h", str(key)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "nobody", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_sshd_config_passes_sshd_t(public_dir):
    text = ssh.render_config(DATA, controller_algorithms())
    res = sshd_t(public_dir, text)
    assert res.returncode == 0, res.stderr
    assert "\nPermitRootLogin no\n" in text and text.rstrip().endswith("Include /etc/ssh/sshd_config.d/*.conf")


def test_sshd_config_during_a_port_move_listens_on_both(public_dir):
    text = ssh.render_config(DATA, controller_algorithms(), ports=[22, 2222])
    assert "Port 22\nPort 2222\n" in text
    assert sshd_t(public_dir, text).returncode == 0


def test_sshd_t_rejects_a_broken_config(public_dir):
    res = sshd_t(public_dir, ssh.render_config(DATA, controller_algorithms()) + "PasswordAuthentication maybe\n")
    assert res.returncode != 0


def test_crypto_policy_is_filtered_by_what_openssh_offers():
    # An OpenSSH that dropped an algorithm must never be handed it (dev-sec #672).
    offered = controller_algorithms()
    offered["kex"] = [k for k in offered["kex"] if not k.startswith("sntrup")]
    lists = ssh.crypto_lists(offered)
    assert lists["kexalgorithms"] and not [k for k in lists["kexalgorithms"] if k.startswith("sntrup")]
    assert "curve25519-sha256" in lists["kexalgorithms"], "paramiko 4 needs a classic KEX"
    with pytest.raises(ValueError, match="supports none"):
        ssh.render_config(DATA, {**offered, "mac": []})


def nft_check(folder: Path, text: str) -> subprocess.CompletedProcess:
    path = folder / "nftables.conf"
    path.write_text(text)
    cmd = ["unshare", "-n", "nft", "-c", "-f", str(path)] if os.geteuid() == 0 else \
          ["unshare", "-rn", "nft", "-c", "-f", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize("extra", [
    {},
    {"egress_policy": "open", "firewall_log_drops": False},
    {"egress_allow": [{"proto": "tcp", "port": 443, "to": ["203.0.113.0/24", "2001:db8:1::/48"],
                       "comment": "exchange API"}]},
    {"ssh_allow_from": ["10.0.0.0/8", "10.1.2.3/32", "2001:db8::/32", "2001:db8::1/128"]},  # overlaps merged
])
def test_ruleset_passes_nft_c(public_dir, extra):
    res = nft_check(public_dir, firewall.render({**DATA, **extra}))
    assert res.returncode == 0, res.stderr


def test_ruleset_during_a_port_move_opens_both_ports(public_dir):
    text = firewall.render(DATA, ssh_ports=[22, 2222])
    assert "tcp dport { 22, 2222 } ip saddr @ssh_allow_v4" in text
    assert nft_check(public_dir, text).returncode == 0


def test_nft_c_rejects_a_broken_ruleset(public_dir):
    assert nft_check(public_dir, firewall.render(DATA).replace("policy drop;", "policy dorp;", 1)).returncode != 0


def test_ruleset_never_flushes_other_tables():
    text = firewall.render(DATA)
    assert not [line for line in text.splitlines() if line.strip().startswith("flush")]
    assert "delete table inet hardkit" in text


def fail2ban_t(folder: Path, jail: str) -> subprocess.CompletedProcess:
    conf = folder / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    (conf / "jail.d" / "hardkit.local").write_text(jail)
    return subprocess.run(["fail2ban-client", "-c", str(conf), "-t"], capture_output=True, text=True)


def test_fail2ban_config_passes_fail2ban_client_t(tmp_path):
    res = fail2ban_t(tmp_path, fail2ban.render(DATA))
    assert res.returncode == 0, res.stdout + res.stderr


def test_fail2ban_rejects_a_broken_jail(tmp_path):
    res = fail2ban_t(tmp_path, fail2ban.render(DATA).replace("banaction = nftables-multiport",
                                                              "banaction = no-such-action"))
    assert res.returncode != 0


def test_fail2ban_never_bans_fixed_operator_addresses_but_watches_ranges():
    ignored = fail2ban.never_banned(DATA)
    assert "10.0.2.2/32" in ignored and "2001:db8:5100::10/128" in ignored
    assert "198.51.100.0/24" not in ignored, "a whole allowed range must stay bannable"


@pytest.mark.parametrize("line", [
    "Invalid user nosuchuser from 198.51.100.66 port 40000",
    "User root from 198.51.100.66 not allowed because none of user's groups are listed in AllowGroups",
    "Connection closed by authenticating user ops 198.51.100.66 port 40000 [preauth]",
])
def test_sshd_filter_matches_what_hardened_sshd_logs(line):
    # Debian's sshd filter in the mode the jail uses, against lines our sshd config produces.
    stamped = f"Nov 21 07:00:00 host sshd[123]: {line}"
    res = subprocess.run(["fail2ban-regex", stamped, "/etc/fail2ban/filter.d/sshd.conf[mode=aggressive]"],
                         capture_output=True, text=True)
    assert "Lines: 1 lines, 0 ignored, 1 matched" in res.stdout, res.stdout[-1500:]


def test_sudoers_rule_passes_visudo(tmp_path):
    path = tmp_path / "sudoers"
    path.write_text(admin.sudoers_text("ops"))
    assert subprocess.run(["visudo", "-cf", str(path)], capture_output=True).returncode == 0
    path.write_text(admin.sudoers_text("ops") + "Defaults log_input!\n")
    assert subprocess.run(["visudo", "-cf", str(path)], capture_output=True).returncode != 0


def test_guard_script_and_boot_unit(tmp_path):
    script = GUARD_TEMPLATES / "hardkit-guard.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    unit = tmp_path / BOOT_UNIT
    unit.write_text((GUARD_TEMPLATES / BOOT_UNIT).read_text().replace("/usr/local/sbin/hardkit-guard", str(script)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in res.stderr.splitlines() if BOOT_UNIT in line]
    assert res.returncode == 0 and not problems, res.stderr
