"""hardkit-bot: a risk-guarded trading bot with crash-safe, idempotent orders."""
__version__ = "0.1.0"
