"""A local Binance for a live bot on a lab VPS: the bot tests' HTTPS simulator, run inside a lab
client's network namespace (traffic stays in the lab), backed by a paper exchange.

Run as `ip netns exec NS python -m tests.integration.lab_exchange ADDRESS PORT FOLDER`, with the API
key and secret on stdin (one line each; never on a command line). It prints one JSON line once it
serves (`{"ca": PATH}`: the throwaway CA the bot must trust), then keeps FOLDER/auth.json up to
date: how many signed requests carried the right key and signature, and how many did not.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit" / "bot"))

from binance_sim import BinanceSim  # noqa: E402
from hardkit_bot.config import parse  # noqa: E402
from hardkit_bot.exchange.paper import PaperExchange  # noqa: E402

PAPER_CONFIG = REPO / "bot" / "examples" / "paper.toml"


class CountingSim(BinanceSim):
    """The simulator, counting each signed request's verdict in auth.json."""

    def __init__(self, *args, folder: Path, **kwargs):
        self.folder, self.verdicts, self._count_lock = folder, {"ok": 0, "refused": 0}, threading.Lock()
        super().__init__(*args, **kwargs)

    def _auth(self, query, body, headers):
        refused = super()._auth(query, body, headers)
        with self._count_lock:
            self.verdicts["refused" if refused else "ok"] += 1
            tmp = self.folder / "auth.json.tmp"
            tmp.write_text(json.dumps(self.verdicts))
            tmp.replace(self.folder / "auth.json")
        return refused


def main(address: str, port: int, folder: Path) -> None:
    key, secret = sys.stdin.readline().strip(), sys.stdin.readline().strip()
    config = parse(PAPER_CONFIG.read_text())
    paper = PaperExchange(folder / "venue.sqlite", {i.symbol: i for i in config.instruments})
    sim = CountingSim(paper, key, secret, folder, folder=folder, host=address, port=port)
    print(json.dumps({"ca": str(sim.ca)}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    sim.close()
    paper.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
