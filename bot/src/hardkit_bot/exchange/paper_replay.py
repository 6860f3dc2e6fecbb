"""The paper exchange of a replay: the same exchange, its book kept in Python structures.

`PaperExchange` keeps its book in its own SQLite file because it must outlive the bot (a
crash test kills the bot between "the exchange accepted" and "the bot recorded it"). A
replay has nothing to outlive: its exchange lived in an in-memory SQLite database, and
each order paid for a dozen statements and three transactions there. This subclass
replaces only the storage methods (`_open_book` … `_recent_trade_rows`): every rule of
the market (fills, slippage, fees, locks, stops, limits, rejections) is PaperExchange's
own code, run unchanged. The rows are the ones the SQLite book would hold, as tuples in
its column order (`tests/unit/bot/test_bot_replay_exchange.py` compares the two).

What it leaves out: nothing is persisted (a replay's exchange dies with it), and a
transaction is the lock alone, with no rollback. PaperExchange raises only before a
call's first write (a duplicate client id, a rejection, an unknown order), so there is
nothing to roll back. Faults cannot be injected (a replay feeds recorded bars; `inject`
raises). Never use it for a bot that runs: `backtest.run` is its one user.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from ..model import ZERO
from .paper import PaperExchange

_OPEN = ("OPEN", "PARTIALLY_FILLED")
_COLS = {"status": 7, "filled": 8, "avg_price": 9, "locked": 10}   # the columns `_set_order` sets


class _Held:
    """`_tx()` of the replay's exchange: its lock, nothing to begin or commit."""
    __slots__ = ("lock",)

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, et, ev, tb) -> None:
        self.lock.release()


class ReplayPaperExchange(PaperExchange):
    """PaperExchange with its book in memory, for `backtest.run` only (see the module doc)."""

    def _open_book(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            raise ValueError("the replay's paper exchange keeps its book in memory only")
        self._meta_kv: dict[str, object] = {}
        self._balances: dict[str, tuple[str, str]] = {}      # asset -> (free, locked) as the table's text
        self._orders: list[tuple] = []                       # row id - 1 -> the orders table's row
        self._by_cid: dict[str, int] = {}
        self._live: dict[int, None] = {}                     # ids of OPEN/PARTIALLY_FILLED orders, in id order
        self._trades: list[tuple] = []                       # rows of `_TRADE_COLS`, in insertion order
        self._trades_by_cid: dict[str, list[tuple]] = {}
        self._held = _Held(self._lock)

    def _tx(self) -> _Held:
        return self._held

    def close(self) -> None:
        pass

    def inject(self, kind: str, count: int = 1, arg: float = 0.0) -> None:
        raise NotImplementedError("a replay's paper exchange takes no injected faults")

    def _meta(self, key: str):
        return self._meta_kv.get(key)

    def _set_meta(self, key: str, value) -> None:
        self._meta_kv[key] = value

    def _seed_balance(self, asset: str, free: Decimal) -> None:
        self._balances.setdefault(asset, (str(free), "0"))

    def _bal(self, asset: str) -> tuple[Decimal, Decimal]:
        r = self._balances.get(asset)
        return (Decimal(r[0]), Decimal(r[1])) if r else (ZERO, ZERO)

    def _put(self, asset: str, free: Decimal, locked: Decimal) -> None:
        self._balances[asset] = (str(free), str(locked))

    def _balance_rows(self) -> list[tuple[str, str, str]]:
        return [(a, f, lk) for a, (f, lk) in self._balances.items()]

    def _has_fault(self, kinds: tuple[str, ...]) -> bool:
        return False

    def _take_fault(self, kinds: tuple[str, ...]) -> None:
        return None

    def _event_rows(self) -> list:
        return []

    def _insert_order(self, cid: str, symbol: str, side: str, typ: str, qty: str, price: str | None, locked: str,
                      created: float, bar: int, trigger: str | None, hold_until: float | None) -> int:
        oid = len(self._orders) + 1
        self._orders.append((oid, cid, symbol, side, typ, qty, price, "OPEN", "0", None, locked, created, bar,
                             trigger, hold_until))
        self._by_cid[cid] = oid
        self._live[oid] = None
        return oid

    def _order(self, oid: int) -> tuple:
        return self._orders[oid - 1]

    def _order_by_cid(self, cid: str) -> tuple | None:
        oid = self._by_cid.get(cid)
        return None if oid is None else self._orders[oid - 1]

    def _order_rows(self) -> list[tuple]:
        return list(self._orders)

    def _open_rows(self, symbol: str | None = None, upto_bar: int | None = None) -> list[tuple]:
        rows = [self._orders[oid - 1] for oid in self._live]
        if symbol is None:
            return rows
        return [r for r in rows if r[2] == symbol and r[12] <= upto_bar]

    def _set_order(self, oid: int, **cols: str) -> None:
        row = list(self._orders[oid - 1])
        for name, value in cols.items():
            row[_COLS[name]] = value
        self._orders[oid - 1] = tuple(row)
        if row[7] not in _OPEN:
            self._live.pop(oid, None)

    def _trade_count(self, oid: int) -> int:
        return len(self._trades_by_cid.get(self._orders[oid - 1][1], ()))

    def _insert_trade(self, *row) -> None:
        trade_id, order_id, client_id, symbol, side, qty, price, fee, ts, fee_asset = row
        t = (trade_id, client_id, symbol, side, qty, price, fee, ts, fee_asset, order_id)   # _TRADE_COLS' order
        self._trades.append(t)
        self._trades_by_cid.setdefault(client_id, []).append(t)

    def _trade_rows(self, client_id: str) -> list[tuple]:
        return list(self._trades_by_cid.get(client_id, ()))

    def _recent_trade_rows(self, symbol: str, since: float | None, limit: int) -> list[tuple]:
        """As the SQL: ordered by (ts, insertion); the newest `limit` without `since`."""
        rows = sorted((t for t in self._trades if t[2] == symbol and (since is None or t[7] >= since)),
                      key=lambda t: t[7])   # a stable sort keeps insertion order among equal times
        return rows[max(len(rows) - limit, 0):] if since is None else rows[:limit]
