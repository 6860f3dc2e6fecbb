"""Prometheus text exposition of the trading state and limit usage.

Written to a file for node_exporter's textfile collector (atomic rename), or
returned by the control socket's `metrics` command. There is deliberately no
TCP listener: nothing on the VPS listens publicly but SSH.
"""
from __future__ import annotations

import os

from .model import TradingState

_STATES = [s.value for s in TradingState]


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(status: dict) -> str:
    out = ["# HELP hardkit_bot_state Trading state (1 for the current one).", "# TYPE hardkit_bot_state gauge"]
    for s in _STATES:
        out.append(f'hardkit_bot_state{{state="{s}"}} {1 if status["state"] == s else 0}')
    out += ["# HELP hardkit_bot_equity Account equity incl. unrealized PnL, quote currency.",
            "# TYPE hardkit_bot_equity gauge", f"hardkit_bot_equity {float(status['equity'])}",
            "# HELP hardkit_bot_exposure Sum of position notionals.", "# TYPE hardkit_bot_exposure gauge",
            f"hardkit_bot_exposure {float(status['exposure'])}",
            "# HELP hardkit_bot_open_orders Live orders.", "# TYPE hardkit_bot_open_orders gauge",
            f"hardkit_bot_open_orders {len(status['open_orders'])}",
            "# HELP hardkit_bot_limit_used Used amount of each risk limit.", "# TYPE hardkit_bot_limit_used gauge"]
    for u in status["limits"]:
        out.append(f'hardkit_bot_limit_used{{limit="{_label(u["name"])}"}} {u["used"]}')
    out += ["# HELP hardkit_bot_limit_value Configured value of each risk limit.", "# TYPE hardkit_bot_limit_value gauge"]
    for u in status["limits"]:
        out.append(f'hardkit_bot_limit_value{{limit="{_label(u["name"])}"}} {u["limit"]}')
    return "\n".join(out) + "\n"


def write_textfile(path: str, status: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(render(status))
    os.replace(tmp, path)

