"""Exchange adapters: the built-in paper exchange (default) and ccxt for real venues."""
