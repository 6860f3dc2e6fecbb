"""Exchange adapters: the built-in paper exchange (default) and ccxt for real venues."""
from __future__ import annotations

import os
from pathlib import Path


def build(cfg, state_dir: Path, clock, *, ca_bundle: str | None = None, urls: dict | None = None):
    """The exchange the config asks for. ccxt credentials come only from $CREDENTIALS_DIRECTORY."""
    x = cfg.exchange
    instruments = {i.symbol: i for i in cfg.instruments}
    if x["kind"] == "paper":
        from .paper import PaperExchange
        return PaperExchange(state_dir / "paper-exchange.sqlite", instruments, quote=cfg.bot["quote"],
                             fee_rate=x["fee_rate"], slippage_bps=x["slippage_bps"],
                             starting_balance=x["starting_balance"], bar_seconds=x["bar_seconds"],
                             series=x["series"], seed=x["seed"], start_price=x["start_price"], clock=clock)
    from .. import creds
    from .ccxt_adapter import CcxtExchange
    key, secret = creds.load()
    creds.install_redaction(key, secret)
    return CcxtExchange(x["id"], key.reveal(), secret.reveal(), sandbox=x["sandbox"], timeout_ms=x["timeout_ms"],
                        ca_bundle=ca_bundle or os.environ.get("HARDKIT_BOT_CA_BUNDLE") or None,
                        urls=urls)
