"""The effective sshd config is evaluated for every allowed range and port: checked with the real sshd here.

A provider's `Match Address` block for an address inside the allow-list, or a `Match LocalPort`
block for a second port, must show up as a disagreement; the old single hard-coded context
(198.51.100.10, port 22) is shown to miss both.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from roles import ssh
from tests.compliance import sshd_contexts
from tests.unit.test_rendered_access import DATA, controller_algorithms, public_dir  # noqa: F401 (fixture)

PROVIDER_DROP_IN = """
Match Address 198.51.100.77
    PasswordAuthentication yes
Match LocalPort 2222
    X11Forwarding yes
"""
OLD_CONTEXT = "user=ops,host=client,addr=198.51.100.10,laddr=0.0.0.0,lport=22"


def _evaluate(folder, extra: str, specs=None):
    text = ssh.render_config(DATA, controller_algorithms(), ports=[22, 2222])
    text = text.replace("Include /etc/ssh/sshd_config.d/*.conf", "")
    cfg, key = folder / "sshd_config", folder / "hostkey"
    cfg.write_text(text)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    for f in folder.iterdir():
        f.chmod(0o644)
    sshd_t = f"sshd -T -f {cfg} -h {key}"
    base = sshd_contexts.parse(_run(sshd_t))  # before the drop-in: a Match LocalPort block needs -C
    text += extra
    cfg.write_text(text)
    if specs is None:
        specs = sshd_contexts.contexts("ops", DATA["ssh_allow_from"], sshd_contexts.listening_ports(base), text)
    return sshd_contexts.split_batch(_run(sshd_contexts.batch_script(specs, sshd_t=sshd_t)))


def _run(script: str) -> str:
    """As nobody when root (as tests/unit/test_rendered_access.py): sshd then skips its /run/sshd check."""
    cmd = ["bash", "-c", script]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "nobody", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def test_clean_config_agrees_in_every_context(public_dir):  # noqa: F811
    per_context = _evaluate(public_dir, "")
    assert len(per_context) == 8  # 4 addresses (a /32, a /24's two ends, a /128) x 2 ports
    for directive, expected in ssh.settings(DATA):
        if directive.lower() in ("debianbanner", "port"):  # not in sshd -T; two ports here (a port move)
            continue
        assert sshd_contexts.disagreements(per_context, directive, expected) == {}, directive


def test_provider_match_blocks_are_found(public_dir):  # noqa: F811
    per_context = _evaluate(public_dir, PROVIDER_DROP_IN)
    passwords = sshd_contexts.disagreements(per_context, "PasswordAuthentication", "no")
    assert list(passwords) and all("addr=198.51.100.77," in c for c in passwords), passwords
    x11 = sshd_contexts.disagreements(per_context, "X11Forwarding", "no")
    assert list(x11) and all(c.endswith("lport=2222") for c in x11) and len(x11) == len(per_context) // 2, x11


def test_the_old_hard_coded_context_missed_them(public_dir):  # noqa: F811
    per_context = _evaluate(public_dir, PROVIDER_DROP_IN, specs=[OLD_CONTEXT])
    assert sshd_contexts.disagreements(per_context, "PasswordAuthentication", "no") == {}
    assert sshd_contexts.disagreements(per_context, "X11Forwarding", "no") == {}


def test_ports_and_addresses_are_enumerated():
    cfg = {"port": ["22", "2222"], "listenaddress": ["0.0.0.0:2200", "[::]:22"]}
    assert sshd_contexts.listening_ports(cfg) == [22, 2200, 2222]
    ss = ('LISTEN 0 128 0.0.0.0:2222 0.0.0.0:* users:(("sshd",pid=9,fd=3))\n'
          'LISTEN 0 128 [::]:22 [::]:* users:(("sshd",pid=9,fd=4))\n'
          'LISTEN 0 4096 127.0.0.1:8080 0.0.0.0:* users:(("python3",pid=7,fd=5))\n')
    assert sshd_contexts.sshd_socket_ports(ss) == [22, 2222]
    text = "Match User x Address 203.0.113.0/28,!192.0.2.9\n  X11Forwarding yes\nmatch address 10.9.9.9\n"
    assert sshd_contexts.client_addresses(["203.0.113.0/24", "10.0.0.0/8", "2001:db8::1/128"], text) == [
        "203.0.113.0", "203.0.113.255", "203.0.113.15", "10.0.0.0", "10.255.255.255", "10.9.9.9", "2001:db8::1"]


def test_a_context_sshd_refuses_is_an_error_not_a_pass():
    with pytest.raises(AssertionError, match="failed"):
        sshd_contexts.split_batch(f"{sshd_contexts.MARKER}user=x\n{sshd_contexts.MARKER}FAILED\n")
