"""The bot's configuration as inventory data: one `bot` key, rendered to /etc/hardkit-bot/bot.toml.

The inventory holds the bot's config as a dict of its TOML sections (`bot`, `exchange`,
`strategy`, `risk`, `control`, `metrics`, `instruments`). It is validated on the controller with
the bot's own validator (`hardkit_bot.config.parse`), so a config the bot would refuse is refused
before any host is touched, with every problem listed. The same rendered text is what the host
gets, so what was validated is what runs.
"""

from __future__ import annotations

import datetime as _dt
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

from roles.data import DataKey, is_bool

#: The default config: the bot's bundled paper-trading example (no money, no credentials).
PAPER_EXAMPLE = Path(__file__).resolve().parent.parent / "bot" / "examples" / "paper.toml"

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Decimal):
        return f'"{v}"'
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(v, (_dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"{v!r} has no TOML form")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _scalar(str(k))


def to_toml(config: dict) -> str:
    """TOML text for the bot's config dict: tables of values, and arrays of tables (`[[instruments]]`)."""
    lines = ["# Managed by hardkit (roles/bot.py), rendered from the inventory's `bot` key.", ""]
    for section, body in config.items():
        if isinstance(body, list) and all(isinstance(x, dict) for x in body):
            for item in body:
                lines.append(f"[[{_key(section)}]]")
                lines += [f"{_key(k)} = {_scalar(v)}" for k, v in item.items()]
                lines.append("")
        elif isinstance(body, dict):
            lines.append(f"[{_key(section)}]")
            lines += [f"{_key(k)} = {_scalar(v)}" for k, v in body.items()]
            lines.append("")
        else:
            lines.append(f"{_key(section)} = {_scalar(body)}")
    return "\n".join(lines)


def paper_default() -> dict:
    return tomllib.loads(PAPER_EXAMPLE.read_text())


def problems(config: Any) -> list[str]:
    """What the bot's own validator says about this config (empty when it would run it)."""
    from hardkit_bot.config import ConfigError, parse

    if not isinstance(config, dict):
        return [f"must be a dict of the bot's config sections, not {config!r}"]
    try:
        text = to_toml(config)
    except TypeError as e:
        return [str(e)]
    try:
        parse(text, "bot")
    except ConfigError as e:
        return list(e.problems)
    return []


def mode(config: dict) -> str:
    """'paper' (the built-in paper exchange, no money) or 'live' (a real exchange through ccxt)."""
    return "paper" if (config.get("exchange") or {}).get("kind", "paper") == "paper" else "live"


def _check(v) -> str | None:
    found = [] if v is None else problems(v)  # None: the documented default
    return ("is not a valid bot config: " + "; ".join(found)) if found else None


BOT_ENABLED = DataKey(
    "bot_enabled", True,
    "Install and run the trading bot on this host (false: the host is hardened without the bot).", is_bool)

BOT_CONFIG = DataKey(
    "bot", None,
    "The bot's config (its TOML sections as a dict), rendered to /etc/hardkit-bot/bot.toml and validated "
    "with the bot's own validator before any host is touched. Default: the bundled paper-trading example "
    "(bot/examples/paper.toml). A config whose exchange.kind is not 'paper' is live and needs credentials. "
    "exchange.ca_bundle, if set, names a PEM file on the controller: the deploy installs it on the host "
    "(/etc/hardkit-bot/exchange-ca.pem) and points the bot at that copy.",
    _check)

BOT_RUNNING = DataKey(
    "bot_expected_state", "ACTIVE",
    "The trading state the compliance check expects the deployed bot in: 'ACTIVE', or 'HALTED' for a host "
    "whose bot an operator halted on purpose.",
    lambda v: None if v in ("ACTIVE", "REDUCING", "HALTED") else f"must be ACTIVE, REDUCING or HALTED, not {v!r}")

KEYS = [BOT_ENABLED, BOT_CONFIG, BOT_RUNNING]


def config_for(data) -> dict:
    """The host's bot config (the inventory's, or the paper default)."""
    value = BOT_CONFIG.value(data)
    return paper_default() if value is None else value


#: Where a private CA bundle named by the inventory's exchange.ca_bundle goes on the host.
HOST_CA_BUNDLE = "/etc/hardkit-bot/exchange-ca.pem"


def controller_ca_bundle(data) -> str | None:
    """The CA bundle file on the controller the inventory's config names (exchange.ca_bundle), if any."""
    return (config_for(data).get("exchange") or {}).get("ca_bundle") or None


def host_config(data) -> dict:
    """The config as the host runs it: a CA bundle named on the controller is read from its host copy."""
    config = config_for(data)
    if controller_ca_bundle(data):
        config = {**config, "exchange": {**config["exchange"], "ca_bundle": HOST_CA_BUNDLE}}
    return config


def rendered(data) -> str:
    return to_toml(host_config(data))
