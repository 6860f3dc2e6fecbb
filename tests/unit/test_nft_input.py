"""hk-fw-04 judges the input chain as a whole: real `nft -j` output of hardkit's ruleset and broken variants.

Each ruleset is loaded by the real nft into a throwaway network namespace and read back as JSON,
exactly the form verify reads from a host. The old check only looked at rules with a
destination port, so `ip saddr X accept` or `meta l4proto tcp accept` passed it.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from roles import firewall
from tests.compliance import nft_input

DATA = {"admin_user": "ops", "ssh_allow_from": ["10.0.2.2/32", "198.51.100.0/24", "2001:db8:5100::10/128"]}


def kernel_json(ruleset: str, tmp_path) -> list[dict]:
    path = tmp_path / "nftables.conf"
    path.write_text(ruleset)
    res = subprocess.run(["unshare", "-n", "sh", "-c", f"nft -f {path} && nft -j list ruleset"],
                         capture_output=True, text=True)
    if res.returncode != 0 and "Operation not permitted" in res.stderr:
        pytest.skip("needs a new network namespace (root or user namespaces) to load a ruleset")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["nftables"]


def with_input_rule(rule: str, extra_chain: str = "") -> str:
    text = firewall.render(DATA)
    marker = "\t\t# SSH: only from the allow-list."
    text = text.replace(marker, f"\t\t{rule}\n{marker}")
    if extra_chain:
        text = text.replace("\tchain forward {", f"\tchain extra {{\n\t\t{extra_chain}\n\t}}\n\n\tchain forward {{")
    return text


def test_hardkit_ruleset_has_no_unexpected_opening(tmp_path):
    assert nft_input.unexpected_accepts(kernel_json(firewall.render(DATA), tmp_path), {22}) == []


def test_a_port_move_ruleset_opens_both_ssh_ports_only(tmp_path):
    ruleset = kernel_json(firewall.render(DATA, ssh_ports=[22, 2222]), tmp_path)
    assert nft_input.unexpected_accepts(ruleset, {22, 2222}) == []
    assert nft_input.unexpected_accepts(ruleset, {22}) != []  # 2222 is not sshd's port then


@pytest.mark.parametrize("rule, extra, says", [
    ("ip saddr 192.0.2.7 accept", "", "ip.saddr ['192.0.2.7']"),
    ("meta l4proto tcp accept", "", "meta.l4proto ['tcp']"),
    ("tcp dport 8080 accept", "", "tcp.dport ['8080']"),
    ("tcp dport 22 accept", "", "tcp.dport ['22']"),  # SSH without the allow-list
    ("ct state new accept", "", "ct.state ['new']"),
    ("icmp type { echo-request, timestamp-request } accept", "", "timestamp-request"),
    ("tcp dport vmap { 80 : accept }", "", "verdict map accepts by tcp.dport"),
    ("ip saddr 192.0.2.0/24 jump extra", "tcp dport 443 accept", "tcp.dport ['443']"),
], ids=["saddr-only", "l4proto-only", "other-port", "ssh-unlisted", "ct-new", "icmp-type", "vmap", "jump"])
def test_a_broken_ruleset_is_caught(tmp_path, rule, extra, says):
    found = nft_input.unexpected_accepts(kernel_json(with_input_rule(rule, extra), tmp_path), {22})
    assert len(found) == 1 and says in found[0], found


def test_an_accept_policy_is_caught(tmp_path):
    text = firewall.render(DATA).replace("hook input priority filter; policy drop;",
                                         "hook input priority filter; policy accept;")
    found = nft_input.unexpected_accepts(kernel_json(text, tmp_path), {22})
    assert found == ["chain input: policy accept (everything not dropped is let in)"]
