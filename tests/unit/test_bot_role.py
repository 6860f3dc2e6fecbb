"""The bot role's rendered files and data, checked on the controller with the real validators.

The unit passes `systemd-analyze verify` and scores at most `MAX_EXPOSURE` in
`systemd-analyze security --offline`; the inventory's `bot` key goes through the bot's own
validator (a bad config is refused before any host is touched, every problem listed); the
rendered TOML is what the bot parses; a release's name follows its sources.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from roles import bot as role
from roles import bot_config, bot_release
from roles.ops import quiet_or_fail

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def unit_file(tmp_path) -> Path:
    """The rendered unit, with `current` at a folder holding the controller's real hardkit-bot."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("needs systemd-analyze (package systemd)")
    current = tmp_path / "current"
    (current / "bin").mkdir(parents=True)
    (current / "bin" / "hardkit-bot").symlink_to(Path(sys.executable).parent / "hardkit-bot")
    path = tmp_path / role.UNIT
    path.write_text(role.render_unit([role.AUDIT_KEY, "exchange-api-key"], [], current=str(current)))
    return path


def test_unit_passes_systemd_analyze_verify(unit_file):
    res = subprocess.run(["sh", "-c", quiet_or_fail("systemd-analyze verify {path}").replace("{path}", str(unit_file))],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_unit_exposure_is_at_most_the_limit(unit_file):
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(unit_file)],
                         capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert score, res.stdout[-500:] + res.stderr
    assert float(score.group(1)) <= role.MAX_EXPOSURE, res.stdout[-1500:]


def test_unit_without_its_sandbox_scores_worse(tmp_path, unit_file):
    """The exposure check can fail: the same unit without the sandbox table is far above the limit."""
    text = unit_file.read_text()
    for key, value in role.SANDBOX:
        text = text.replace(f"{key}={value}\n", "")
    bare = tmp_path / "bare.service"
    bare.write_text(text)
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(bare)],
                         capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert score and float(score.group(1)) > role.MAX_EXPOSURE


def test_unit_loads_each_credential_and_requires_units():
    text = role.render_unit([role.AUDIT_KEY, "exchange-api-key"], ["hardkit-bot-egress.service"])
    for cred in (role.AUDIT_KEY, "exchange-api-key"):
        assert f"LoadCredentialEncrypted={cred}:{role.cred_path(cred)}\n" in text
    assert "Requires=hardkit-bot-egress.service\n" in text


def test_credentials_wanted_keeps_known_names_only():
    listing = ["hardkit-bot.exchange-api-secret", "hardkit-bot.audit-key", "hardkit-bot.exchange-api-key",
               "other.exchange-api-key", "hardkit-bot.stray"]
    assert role.credentials_wanted(listing) == [role.AUDIT_KEY, "exchange-api-key", "exchange-api-secret"]


def test_default_config_is_the_paper_example_and_round_trips():
    config = bot_config.config_for({})
    assert bot_config.mode(config) == "paper"
    text = bot_config.rendered({})
    assert tomllib.loads(text) == tomllib.loads(bot_config.PAPER_EXAMPLE.read_text())
    assert bot_config.problems(config) == []


def test_to_toml_quotes_and_escapes():
    data = {"bot": {"instance_id": 'a"b\\c', "n": 3, "flag": False, "f": 1.5, "list": ["x", 2]},
            "instruments": [{"symbol": "BTC/USDT"}, {"symbol": "ETH/USDT"}]}
    assert tomllib.loads(bot_config.to_toml(data)) == data


def test_bad_bot_config_lists_every_problem():
    config = bot_config.paper_default()
    config["risk"]["max_drawdown_pct"] = "-5"
    config["exchange"]["kind"] = "nosuch"
    config["bogus"] = {"x": 1}
    found = bot_config.problems(config)
    text = "; ".join(found)
    assert len(found) >= 3, found
    assert "bogus" in text and "kind" in text and "max_drawdown_pct" in text, text


def test_live_config_is_live():
    config = tomllib.loads((REPO / "bot" / "examples" / "binance-testnet.toml").read_text())
    assert bot_config.mode(config) == "live"


def test_inventory_with_a_bad_bot_config_is_refused_before_connecting(tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inv = tmp_path / "inv.py"
    inv.write_text(textwrap.dedent(f"""
        _d = {{"ssh_hostname": "127.0.0.1", "ssh_port": 9, "ssh_key": "{key}", "admin_user": "ops",
              "admin_keys": ["{key}.pub"], "ssh_allow_from": ["10.0.2.2/32"],
              "bot": {{"exchange": {{"kind": "paper"}}, "risk": {{"max_drawdown_pct": "-5"}}}}}}
        hosts = [("a", _d), ("b", {{**_d, "bot_enabled": "yes"}})]
    """))
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(inv)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "a: bot is not a valid bot config" in res.stderr and "max_drawdown_pct" in res.stderr, res.stderr
    assert "b: bot_enabled must be true or false" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "connect" not in res.stderr.lower(), res.stderr


def test_release_name_follows_the_sources(tmp_path, monkeypatch):
    before = bot_release.name()
    assert re.fullmatch(rf"{re.escape(bot_release.version())}-[0-9a-f]{{12}}", before)
    assert bot_release.name() == before  # stable: the same sources give the same name
    copy = tmp_path / "bot"
    shutil.copytree(bot_release.BOT_SRC, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    monkeypatch.setattr(bot_release, "BOT_SRC", copy)
    assert bot_release.name() == before  # the same sources elsewhere: the same release
    (copy / "src" / "hardkit_bot" / "__init__.py").write_text(
        (copy / "src" / "hardkit_bot" / "__init__.py").read_text() + "\n# changed\n")
    assert bot_release.name() != before


def test_a_live_bot_needs_credentials_and_egress_before_any_host_is_touched(tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    live = tomllib.loads((REPO / "bot" / "examples" / "binance-testnet.toml").read_text())
    (tmp_path / "secrets" / "staging").mkdir(parents=True)
    (tmp_path / "secrets" / "staging" / "exchange-api-key.age").write_bytes(b"not read by validation")
    inv = tmp_path / "inv.py"
    inv.write_text(textwrap.dedent(f"""
        _d = {{"ssh_hostname": "127.0.0.1", "ssh_port": 9, "ssh_key": "{key}", "admin_user": "ops",
              "admin_keys": ["{key}.pub"], "ssh_allow_from": ["10.0.2.2/32"], "bot": {live!r}}}
        hosts = [("nocreds", _d), ("halfcreds", {{**_d, "secrets_env": "staging"}}),
                 ("paper", {{**_d, "bot": None}})]
    """))
    env = dict(os.environ, HARDKIT_SECRETS_DIR=str(tmp_path / "secrets"))
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "deploy", str(inv)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    err = res.stderr
    assert "nocreds: bot is live (exchange.kind is not 'paper') but secrets_env is not set" in err, err
    assert "halfcreds: bot is live (exchange.kind is not 'paper') but secrets environment 'staging' has no exchange-api-secret" in err, err
    assert "nocreds: bot is live but bot_egress_endpoints is empty" in err, err
    assert "paper:" not in err, err
