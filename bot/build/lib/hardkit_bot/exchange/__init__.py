"""Exchange adapters: the built-in paper exchange (default) and ccxt for real venues."""
from __future__ import annotations

from pathlib import Path


def build(cfg, state_dir: Path, clock):
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
                        ca_bundle=x["ca_bundle"] or None, api_url=x["api_url"] or None, timeframe=x["timeframe"])
