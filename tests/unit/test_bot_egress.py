"""The bot's egress allow-list: endpoint parsing, the rendered table and units checked by the real
validators, and the host tool (hardkit-bot-egress) driving a real nft in a throwaway namespace.

Name resolution is an input here (a table of answers standing in for DNS); nft, the kernel's
sets and the tool's state file are real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from roles import bot_egress as role
from roles import bot_egress_refresh as tool
from roles.updates import UNIT_CHECK
from tests.unit.test_os_configs import run_validator

#: A user that exists on every controller, standing in for the bot's (nft resolves the name).
SOME_USER = "nobody"


# --- endpoints ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, host, port, version", [
    ("api.binance.com:443", "api.binance.com", 443, None),
    ("API.Example.ORG.:8443", "api.example.org", 8443, None),
    ("198.51.100.10:443", "198.51.100.10", 443, 4),
    ("[2001:db8::10]:443", "2001:db8::10", 443, 6),
])
def test_endpoints_parse(text, host, port, version):
    e = tool.parse_endpoint(text)
    assert (e.host, e.port, e.address.version if e.address else None) == (host, port, version)
    assert tool.parse_endpoint(e.text) == e


@pytest.mark.parametrize("text, says", [
    ("api.binance.com", "has no port"),
    ("api.binance.com:0", "port must be 1-65535"),
    ("api.binance.com:https", "port must be 1-65535"),
    ("2001:db8::10:443", "brackets"),
    ("[2001:db8::zz]:443", "not an IPv6 address"),
    ("[2001:db8::10]443", "written '[address]:port'"),
    ("bad_name!:443", "neither an IPv4 address nor a host name"),
    ("300.1.1.1:443", "neither an IPv4 address nor a host name"),
    (443, "is not an endpoint"),
])
def test_bad_endpoints_say_what_is_wrong(text, says):
    with pytest.raises(tool.ConfigError, match=re.escape(says)):
        tool.parse_endpoint(text)


def test_data_key_lists_every_bad_endpoint():
    msg = role.ENDPOINTS.check(["ok.example:443", "nope", "1.2.3.4:99999"])
    assert "'nope' has no port" in msg and "'1.2.3.4:99999'" in msg and "ok.example" not in msg
    assert role.ENDPOINTS.check([]) is None and role.ENDPOINTS.default == []
    assert role.ENDPOINTS.check("api.binance.com:443") is not None


def test_resolvers_skip_loopback_and_scope():
    text = "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\n" \
           "nameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver bogus\noptions edns0\n"
    assert tool.resolvers(text) == {4: {"192.0.2.53"}, 6: {"fe80::1", "2001:db8::53"}}


def test_system_resolver_reads_the_hosts_file():
    assert "127.0.0.1" in tool.system_resolve("localhost")


# --- the rendered files -----------------------------------------------------------------------------

def nft_check(path: Path) -> subprocess.CompletedProcess:
    cmd = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    return subprocess.run([*cmd, "nft", "-c", "-f", str(path)], capture_output=True, text=True)


def test_table_passes_nft_c(tmp_path):
    path = tmp_path / "bot-egress.nft"
    path.write_text(role.render_ruleset(SOME_USER))
    res = nft_check(path)
    assert res.returncode == 0, res.stderr


def test_nft_c_rejects_a_broken_table(tmp_path):
    path = tmp_path / "bad.nft"
    path.write_text(role.render_ruleset(SOME_USER).replace("policy accept;", "policy acept;"))
    assert nft_check(path).returncode != 0


def test_table_is_its_own_and_judges_only_the_bots_uid():
    text = role.render_ruleset()
    assert "table inet hardkit_bot {" in text and "table inet hardkit {" not in text
    assert not [line for line in text.splitlines() if line.strip().startswith("flush")]
    output = text.split("chain output {")[1].split("}")[0]
    assert "policy accept;" in output and f'meta skuid "{role.BOT_USER}" jump {role.CHAIN}' in output
    last = [line.strip() for line in text.split(f"chain {role.CHAIN} {{")[1].splitlines() if line.strip()]
    assert last[-4].startswith("limit rate 5/minute") and last[-3] == f"counter name {role.COUNTER} drop"


def test_config_normalises_the_endpoints():
    cfg = json.loads(role.render_config({"bot_egress_endpoints": ["Exchange.Lab:443", "[2001:DB8::1]:443"]}))
    assert cfg == {"ruleset": role.RULESET_FILE, "endpoints": ["exchange.lab:443", "[2001:db8::1]:443"]}


@pytest.fixture
def unit_dir(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed on this controller")
    for name, text in role.render_units({}, tool_path=str(role.TOOL_SOURCE)).items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", [role.BOOT_UNIT, role.REFRESH_UNIT, role.REFRESH_TIMER])
def test_units_pass_systemd_analyze_verify(unit_dir, unit):
    res = run_validator(UNIT_CHECK, unit_dir / unit)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("unit", [role.BOOT_UNIT, role.REFRESH_UNIT])
def test_units_are_sandboxed(unit_dir, unit):
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100",
                          str(unit_dir / unit)], capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    # root with CAP_NET_ADMIN and the host's network is what loading nft rules takes
    assert score and float(score.group(1)) <= 3.0, res.stdout[-800:]


def test_boot_unit_orders_before_the_bot():
    units = role.render_units({"bot_egress_refresh_minutes": 5})
    boot = units[role.BOOT_UNIT]
    assert "After=nftables.service" in boot and f"Before={role.BOT_UNIT}" in boot
    assert "RemainAfterExit=yes" in boot and "WantedBy=multi-user.target nftables.service" in boot
    assert "PartOf=nftables.service" in boot and "ExecReload=" in boot and "ExecReload=" not in units[role.REFRESH_UNIT]
    assert "OnUnitActiveSec=5min" in units[role.REFRESH_TIMER]
    assert "[Install]" not in units[role.REFRESH_UNIT]


# --- the host tool against a real nft ---------------------------------------------------------------

@pytest.fixture
def netns(tmp_path):
    """A throwaway network namespace held open by a sleeper; `nft` is a wrapper that enters it."""
    if not shutil.which("nsenter") or not shutil.which("nft"):
        pytest.skip("needs nft and nsenter (util-linux) on this controller")
    root = os.geteuid() == 0
    sleeper = subprocess.Popen(["unshare", "-n" if root else "-rn", "sleep", "600"])
    try:
        enter = "nsenter -n" if root else "nsenter -U -n --preserve-credentials"
        wrapper = tmp_path / "nft-in-ns"
        wrapper.write_text(f'#!/bin/sh\nexec {enter} -t {sleeper.pid} nft "$@"\n')
        wrapper.chmod(0o755)
        for _ in range(50):  # the namespace exists once unshare has exec'd sleep
            if subprocess.run([str(wrapper), "list", "tables"], capture_output=True).returncode == 0:
                break
        yield str(wrapper)
    finally:
        sleeper.send_signal(signal.SIGTERM)
        sleeper.wait(timeout=10)


class Host:
    """The tool's files in a folder, and a DNS that answers from a table (a missing name fails)."""

    def __init__(self, folder: Path, nft: str, endpoints: list[str]):
        self.folder, self.nft, self.answers, self.log = folder, nft, {}, []
        (folder / "bot-egress.nft").write_text(role.render_ruleset(SOME_USER))
        (folder / "resolv.conf").write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\n")
        self.configure(endpoints)

    def configure(self, endpoints):
        (self.folder / "config.json").write_text(json.dumps({"ruleset": str(self.folder / "bot-egress.nft"),
                                                             "endpoints": endpoints}))

    def resolve(self, name):
        if name not in self.answers:
            raise OSError(f"[Errno -2] Name or service not known: {name}")
        return self.answers[name]

    def run(self, action):
        self.log = []
        return tool.run(action, str(self.folder / "config.json"), str(self.folder / "state" / "state.json"),
                        resolv_conf=str(self.folder / "resolv.conf"), nft=self.nft, resolve=self.resolve,
                        log=self.log.append)

    def sets(self):
        return tool.current_elements(self.nft)

    def listing(self):
        return json.loads(subprocess.run([self.nft, "-j", "list", "table", "inet", tool.TABLE],
                                         capture_output=True, text=True, check=True).stdout)["nftables"]


@pytest.fixture
def egress_host(tmp_path, netns):
    return Host(tmp_path, netns, ["exchange.lab:443", "198.51.100.10:8443", "[2001:db8::10]:443"])


def test_load_fills_every_set_in_one_transaction(egress_host):
    h = egress_host
    h.answers["exchange.lab"] = ["203.0.113.5", "2001:db8::5"]
    assert h.run("load") == 0
    assert h.sets() == {
        "exchange_v4": {"203.0.113.5 . 443", "198.51.100.10 . 8443"},
        "exchange_v6": {"2001:db8::5 . 443", "2001:db8::10 . 443"},
        "resolvers_v4": {"192.0.2.53"},  # 127.0.0.53 is reached over lo
        "resolvers_v6": set(),
    }
    objs = h.listing()
    assert any(o.get("counter", {}).get("name") == role.COUNTER for o in objs)
    assert any(o.get("chain", {}).get("name") == role.CHAIN for o in objs)
    assert "exchange_v4: +198.51.100.10 . 8443, +203.0.113.5 . 443" in h.log


def test_refresh_replaces_changed_addresses_and_logs_them(egress_host):
    h = egress_host
    h.answers["exchange.lab"] = ["203.0.113.5"]
    h.run("load")
    h.answers["exchange.lab"] = ["203.0.113.6", "203.0.113.7"]
    assert h.run("refresh") == 0
    assert h.sets()["exchange_v4"] == {"203.0.113.6 . 443", "203.0.113.7 . 443", "198.51.100.10 . 8443"}
    assert "exchange_v4: +203.0.113.6 . 443, +203.0.113.7 . 443, -203.0.113.5 . 443" in h.log
    assert h.run("refresh") == 0 and h.log == ["sets unchanged"]


def test_failed_resolution_keeps_the_last_good_addresses(egress_host):
    h = egress_host
    h.answers["exchange.lab"] = ["203.0.113.5"]
    h.run("load")
    del h.answers["exchange.lab"]
    assert h.run("refresh") == 0
    assert "203.0.113.5 . 443" in h.sets()["exchange_v4"]
    assert any("resolution failed" in line and "keeping the last good addresses: 203.0.113.5" in line
               for line in h.log)
    # ...across a reload too (the boot unit): the last good addresses come from the state file
    assert h.run("load") == 0 and "203.0.113.5 . 443" in h.sets()["exchange_v4"]


def test_a_name_never_resolved_is_reported(egress_host):
    h = egress_host
    assert h.run("load") == 0
    assert h.sets()["exchange_v4"] == {"198.51.100.10 . 8443"}
    assert "exchange.lab: no address known yet: the bot cannot reach it" in h.log


def test_removed_endpoints_leave_the_sets(egress_host):
    h = egress_host
    h.answers["exchange.lab"] = ["203.0.113.5"]
    h.run("load")
    h.configure([])
    h.run("refresh")
    assert h.sets() == {"exchange_v4": set(), "exchange_v6": set(), "resolvers_v4": {"192.0.2.53"},
                        "resolvers_v6": set()}


def test_refresh_puts_a_missing_table_back(egress_host):
    h = egress_host
    h.answers["exchange.lab"] = ["203.0.113.5"]
    h.run("load")
    subprocess.run([h.nft, "delete", "table", "inet", tool.TABLE], check=True)  # what `nft flush ruleset` does to it
    assert h.run("refresh") == 0
    assert "table inet hardkit_bot was not loaded: loading it" in h.log
    assert h.sets()["exchange_v4"] == {"203.0.113.5 . 443", "198.51.100.10 . 8443"}
    assert any(o.get("counter", {}).get("name") == role.COUNTER for o in h.listing())


def test_a_rejected_load_changes_nothing(egress_host):
    h = egress_host
    h.answers["exchange.lab"] = ["203.0.113.5"]
    h.run("load")
    before = h.sets()
    ruleset = h.folder / "bot-egress.nft"
    ruleset.write_text(ruleset.read_text().replace("type ipv6_addr . inet_service", "type ipv6_addr . no_such_type"))
    with pytest.raises(RuntimeError, match="nothing was changed"):
        h.run("load")
    assert h.sets() == before


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"ruleset": "/x", "endpoints": ["ok.example:443", "no-port"]}))
    res = subprocess.run([sys.executable, str(role.TOOL_SOURCE), "check-config", str(cfg)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "'no-port' has no port" in res.stderr
    cfg.write_text("{not json")
    res = subprocess.run([sys.executable, str(role.TOOL_SOURCE), "check-config", str(cfg)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "cannot read the config" in res.stderr and "Traceback" not in res.stderr


def test_compliance_sees_a_widened_allow_list(egress_host):
    """hk-bot-egr-02's reading of the loaded chain: every accept is one of the four allowed kinds,
    and an extra accept (here SSH anywhere) is caught."""
    from tests.compliance.test_bot_egress import accepted_traffic

    h = egress_host
    h.run("load")

    def kinds():
        return [accepted_traffic(o["rule"]["expr"]) for o in h.listing()
                if "rule" in o and o["rule"]["chain"] == role.CHAIN and any("accept" in e for e in o["rule"]["expr"])]

    assert kinds() == ["loopback", "replies", "dns", "dns", "exchange", "exchange"]
    subprocess.run([h.nft, "insert", "rule", "inet", tool.TABLE, role.CHAIN, "tcp", "dport", "22", "accept"],
                   check=True)
    assert None in kinds()
