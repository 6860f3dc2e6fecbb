"""The engine: wires data, strategy, stops, breakers and the order manager into a loop.

One iteration (`step`), in this order:
1. adopt the ledger's latched state (anyone may have written it: one source of truth);
2. observe: pull and validate market data, feed new bars to the indicators and the
   volatility breaker (the strategy's signals are only collected), sync live orders
   and balances;
3. breakers: evaluate every limit on the fresh equity and latch what trips;
4. strategy: act on the collected signals (every order still passes the pipeline,
   which sees the state the breakers just set);
5. orders: *enforce* the effective state (cancel entries when REDUCING, cancel
   everything non-protective when HALTED, flatten when KILLED, auto-close on the
   volatility breaker, fire stops and targets, keep each position's resting
   exchange stop in step: `resting_stops.py`), then arm, refresh or disarm the
   venue's dead-man's switch for resting entries (`deadman.py`).
Breakers before the strategy means a condition that still holds after a reset
re-trips before any entry can leave. Any unexpected exception in an iteration
latches HALTED with the error as the reason and the loop carries on, so the
control socket, stops and status keep working; state is never lost because
every change is already committed to the ledger.

The same object runs backtests (`replay_bar`), so a backtest exercises the very
same risk code, order manager and paper exchange as a live run.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from . import audit, faults
from .config import Config
from .deadman import DeadMansSwitch, cancel_stale_entries
from .exchange.base import BadExchangeData, ExchangeError
from .inhibitor import RebootInhibitor
from .marketdata import MarketData
from .model import ZERO, Bar, Intent, OrderStatus, Position, Side, TradingState
from .orders import OrderManager
from .reconcile import ReconcileReport, reconcile
from .risk.limits import (ActivityRate, ConsecutiveLosses, DailyLoss, Drawdown, EquityFloor, LossOverrun,
                          StaleData, Usage, Volatility)
from .risk.pipeline import RiskLimits, size_for_risk
from .risk.epoch import epoch_meta
from .risk.state import StateMachine
from .resting_stops import RestingStops
from .stops import TrailingStops
from .store import Store
from .strategy import NO_SIGNAL, Signal, TrendATR

log = logging.getLogger(__name__)

# The states the per-bar path compares with (an Enum member looked up on its class costs ~0.3 µs on 3.11).
_ACTIVE, _KILLED = TradingState.ACTIVE, TradingState.KILLED


class Engine:
    def __init__(self, cfg: Config, store: Store, exchange, clock=time.time, *, live: bool = True,
                 inhibitor: RebootInhibitor | None = None, metrics_file: str | None = None,
                 resting_stops: bool = True, dead_man: bool = True):
        """`resting_stops=False` keeps stops bot-enforced only and `dead_man=False` never arms the venue's
        dead-man's switch (backtests: no venue outlives a replay)."""
        self.cfg, self.store, self.exchange, self.clock, self.live = cfg, store, exchange, clock, live
        self.instruments = {i.symbol: i for i in cfg.instruments}
        self.quote = cfg.bot["quote"]
        r, s = cfg.risk, cfg.strategy
        self.sm = StateMachine(store, clock)
        self.limits = RiskLimits.from_config(r, cfg.exchange)
        self.activity = ActivityRate({"orders": r["breaker_orders_per_minute"], "rejects": r["breaker_rejects_per_minute"],
                                      "cancels": r["breaker_cancels_per_minute"]})
        self._seed_activity()
        self.market = MarketData(clock, r["max_data_ahead_s"], r["price_sanity_ratio"])
        self.om = OrderManager(store, exchange, self.sm, self.limits, self.instruments, cfg.bot["instance_id"],
                               self.market, self.activity, clock, cfg.exchange["unknown_grace_s"],
                               on_fill=self._on_fill, on_live=self._on_live)
        self.daily = DailyLoss(store, cfg.tz, float(r["daily_loss_reduce_pct"]), float(r["max_daily_loss_pct"]))
        self.drawdown = Drawdown(store, float(r["max_drawdown_pct"]))
        self.streak = ConsecutiveLosses(store, r["max_consecutive_losses"])
        self.floor = EquityFloor(float(r["equity_floor"]), store, float(r["max_drawdown_pct"]))
        self.stale = StaleData(list(self.instruments), r["stale_data_s"], clock())
        self.vol = {sym: Volatility(r["vol_window"], r["vol_z_enter"], r["vol_z_exit"], r["vol_clear_bars"],
                                    r["vol_gap_pct"]) for sym in self.instruments}
        self.overrun = LossOverrun(r["loss_overrun_pct"], float(cfg.exchange["fee_rate"]))
        self._planned_stop: dict[str, float | None] = {}   # per open position: its entry's planned stop
        self._overrun_alerted: set[str] = set()
        self.strats = {sym: TrendATR(s["fast"], s["slow"], s["atr_period"], s["band_atr"]) for sym in self.instruments}
        self.stops = TrailingStops(store, self.instruments, s["stop_atr"])
        self.resting = None
        if resting_stops and cfg.exchange["protective_stop"]:
            if getattr(exchange, "supports_stops", False):
                self.resting = RestingStops(self.om, self.instruments, self.quote, cfg.exchange["stop_move_min_s"])
            else:
                log.warning("exchange.protective_stop: this venue takes no stop-loss orders; stops are enforced "
                            "by the bot only, and protect nothing while it is down")
        self.dead_man_on = dead_man and cfg.exchange["dead_man_switch"]
        self.dead_man = None
        if self.dead_man_on:
            if getattr(exchange, "supports_dead_man", False):
                self.dead_man = DeadMansSwitch(exchange, cfg.exchange["dead_man_timeout_s"])
            else:
                log.warning("exchange.dead_man_switch: this venue has no dead-man's switch; an entry left resting "
                            "by a dead bot stays until the next start cancels it")
        self.inhibitor = inhibitor
        self.metrics_file = metrics_file
        self.positions: dict[str, Position] = store.positions()
        self._pos_f = {k: float(p.qty) for k, p in self.positions.items() if self.om.holds(k, p.qty)}
        self._cash_f = 0.0
        self._equity_known = False
        self.equity_f = 0.0
        self._autoclose: set[str] = set()
        self._stale_flag = False
        self._equity_checked_at = -1     # the latch severity the equity breakers last ran at (breakers())
        self._bar_seconds = float(getattr(exchange, "bar_seconds", 60.0))
        self._warmup_bars = min(500, max(s["slow"], s["atr_period"], r["vol_window"]) + 5)
        self._last_snapshot = 0.0
        self._close_seq = 0
        self._last_anchor = float("-inf")
        self.started = clock()
        self.steps = 0

    # ---- lifecycle -----------------------------------------------------------
    def start(self) -> ReconcileReport:
        rep = reconcile(self.om, self.cfg.bot["instance_id"])
        self.om.has_live = bool(self.om.live_rows())   # reconciliation may have adopted or revived a live order
        if not self.om.book.matches_ledger():   # the risk guard's in-memory book must be the ledger's
            self.sm.escalate(TradingState.HALTED, "the in-memory order book differed from the ledger at start")
        if self.dead_man_on:
            cancel_stale_entries(self.om, self.cfg.exchange["dead_man_timeout_s"])
        self.guard_switch()
        self._on_fill()
        view = self.sm.view()
        log.info("started in %s (%s)", view.state.value, view.reason)
        return rep

    def _seed_activity(self) -> None:
        """Restore the rolling-minute activity counters from the ledger (a restart is no reset)."""
        since = self.clock() - 60
        for row in self.store.orders_touched_since(since):
            if row["sent_at"] and row["sent_at"] >= since:
                self.activity.record("orders", row["sent_at"])
            if row["status"] == OrderStatus.REJECTED.value:
                self.activity.record("rejects", row["updated_at"])
            elif row["status"] == OrderStatus.CANCELED.value and row["sent_at"]:
                self.activity.record("cancels", row["updated_at"])

    def _on_fill(self) -> None:
        """The ledger's fills changed: refresh cached positions, equity, loss streak and stops."""
        self.positions = self.store.positions()
        self._pos_f = {k: float(p.qty) for k, p in self.positions.items() if self.om.holds(k, p.qty)}
        for sym in [s for s in self._planned_stop if s not in self._pos_f]:   # flat: the next entry has its own plan
            del self._planned_stop[sym]
            self._overrun_alerted.discard(sym)
        acct = self.om.account
        if acct.balances:
            self._cash_f = float(acct.total(self.quote))
            self._equity_known = True
            self.equity_f = self._equity()
        self.streak.refresh()
        self.stops.sync(self.positions, self.store.entry_plan, {s: st.atr for s, st in self.strats.items()})
        if self.live:
            self.update_inhibitor()   # exposure changed: tell the OS now, not at the end of the iteration

    def _on_live(self) -> None:
        self.guard_switch()    # before the send: a stop never leaves with the switch armed
        if self.live:
            self.update_inhibitor()

    def guard_switch(self) -> None:
        """Arm, refresh or disarm the venue's dead-man's switch for our live orders (deadman.py)."""
        if self.dead_man is not None:
            with self.om.lock:
                self.dead_man.update(self.om.live_rows())

    def run(self, stop: threading.Event) -> None:
        interval = self.cfg.bot["loop_interval_s"]
        while not stop.is_set():
            self.step_safely()
            stop.wait(interval)

    def step_safely(self) -> None:
        try:
            self.step()
        except Exception as e:  # a bug must not take the guard down with it
            log.exception("engine iteration failed")
            self.sm.escalate(TradingState.HALTED, f"internal error in the engine loop: {type(e).__name__}: {e}")

    # ---- one live iteration ----------------------------------------------------
    def step(self) -> None:
        now = self.clock()
        if self.sm.refresh():
            self._reload_risk_state()
        signals = self._observe(now)
        self.breakers(self.clock())
        for sym, (sig, bar) in signals.items():
            self.act(sym, sig, bar)
        self.enforce(self.clock())
        self.guard_switch()
        if self.live:
            self._housekeeping(self.clock())
        self.steps += 1

    def _observe(self, now: float) -> dict[str, tuple[Signal, Bar]]:
        """Market data into indicators, orders and balances into the caches; returns the
        last actionable signal per instrument (acted on after the breakers)."""
        signals: dict[str, tuple[Signal, Bar]] = {}
        for sym in self.instruments:
            try:
                price, ts = self.exchange.ticker(sym)
                if self.market.on_tick(sym, price, ts):
                    self.stale.seen(sym, min(ts, now))   # the data's own time: a frozen feed goes stale
                since = self.market.last_bar_ts.get(sym, now - self._warmup_bars * self._bar_seconds)
                bars = self.exchange.candles(sym, since)
            except (BadExchangeData, ExchangeError) as e:
                log.warning("market data for %s: %s", sym, e)
                continue
            fresh_after = now - 2 * self._bar_seconds - self.cfg.bot["loop_interval_s"]
            for bar in bars:
                if self.market.accept_bar(sym, bar):
                    sig = self.observe_bar(sym, bar)
                    # history (warm-up after a start, or catching up) feeds indicators but never trades
                    if sig is not Signal.NONE and bar.ts + self._bar_seconds >= fresh_after:
                        signals[sym] = (sig, bar)
        try:
            self.om.sync_all()
            self.om.refresh_account()
            self._on_fill()
        except ExchangeError as e:
            log.warning("order/balance sync: %s", e)
        return signals

    def observe_bar(self, sym: str, bar: Bar) -> Signal:
        """Feed one bar to the volatility breaker, the strategy and the trailing stop; trade nothing."""
        v = self.vol[sym]
        change = v.on_bar(bar.high, bar.low, bar.close, bar.open)
        if change is True:
            self.sm.set_transient(f"volatility:{sym}", TradingState.REDUCING, f"abnormal volatility on {sym}: {v.reason}")
            self._autoclose.add(sym)
        elif change is False:
            self.sm.set_transient(f"volatility:{sym}", None)
            self._autoclose.discard(sym)
        st = self.strats[sym]
        if self._pos_f:
            faults.wedge_point("strategy")
        sig = st.on_bar(bar)
        if sym in self._pos_f:
            self.stops.trail(sym, bar.close, st.atr)
        return sig

    def act(self, sym: str, sig: Signal, bar: Bar) -> None:
        """The strategy's turn: an entry only while ACTIVE, an exit of what we hold."""
        if sig is Signal.ENTER_LONG and sym not in self._pos_f and self.sm.effective is TradingState.ACTIVE \
                and not (self.om.has_live and any(r["instrument"] == sym for r in self.om.live_rows())):
            self._enter(sym, bar, self.strats[sym])
        elif sig is Signal.EXIT_LONG and sym in self._pos_f:
            self.close_position(sym, "exit", protective=False, key=f"{sym}:{int(bar.ts * 1000)}:exit")

    def _enter(self, sym: str, bar: Bar, st: TrendATR) -> None:
        inst = self.instruments[sym]
        last = self.market.last.get(sym)
        entry = last[0] if last else Decimal(repr(bar.close))
        k, t = Decimal(repr(self.cfg.strategy["stop_atr"])), Decimal(repr(self.cfg.strategy["target_atr"]))
        atr = Decimal(repr(st.atr))
        stop = ((entry - k * atr) / inst.tick_size).to_integral_value(rounding=ROUND_DOWN) * inst.tick_size
        tp = ((entry + t * atr) / inst.tick_size).to_integral_value(rounding=ROUND_UP) * inst.tick_size
        snap_eq = Decimal(repr(self.equity_f))
        exposure = sum((Decimal(repr(q)) * self.market.last.get(s, (ZERO, 0))[0] for s, q in self._pos_f.items()), ZERO)
        qty = size_for_risk(snap_eq, entry, stop, self.limits, inst, self.om.account.free(self.quote), exposure)
        if qty <= 0:
            return
        intent = Intent(key=f"{sym}:{int(bar.ts * 1000)}:enter", instrument=sym, side=Side.BUY, qty=qty, ref_price=entry,
                        stop_price=stop, take_profit=tp, reason="trend entry")
        self.om.submit(intent, self.quote)

    def close_position(self, sym: str, why: str, *, protective: bool = True, key: str | None = None) -> str | None:
        """Sell what we hold of `sym` (minus pending sells), rounded down to the step."""
        inst = self.instruments[sym]
        pos = self.positions.get(sym)
        if pos is None or pos.qty <= 0:
            return None
        if self.resting is not None:
            if not self.resting.release(sym):   # its coin is locked by the resting stop: try again next time
                return None
            pos = self.positions.get(sym)       # the stop may have filled meanwhile (the release pulled it in)
            if pos is None or pos.qty <= 0:
                return None
        pending = sum((Decimal(r["qty"]) - Decimal(r["filled"]) for r in self.om.live_rows()
                       if r["instrument"] == sym and r["side"] == "sell"), ZERO) if self.om.has_live else ZERO
        qty = ((pos.qty - pending) / inst.step_size).to_integral_value(rounding=ROUND_DOWN) * inst.step_size
        if qty <= 0 or qty < inst.min_qty:
            return None
        last = self.market.last.get(sym)
        ref = last[0] if last else pos.avg_price
        self._close_seq += 1
        intent = Intent(key=key or f"{sym}:{why}:{int(self.clock() * 1000)}:{self._close_seq}", instrument=sym,
                        side=Side.SELL, qty=qty, ref_price=ref, reduce_only=True, protective=protective, reason=why)
        res = self.om.submit(intent, self.quote)
        return res.client_order_id

    # ---- breakers and enforcement ------------------------------------------------
    def _equity(self) -> float:
        eq = self._cash_f
        last = self.market.last_f
        for sym, q in self._pos_f.items():
            lp = last.get(sym)
            eq += q * (lp if lp is not None else float(self.positions[sym].avg_price))
        return eq

    def breakers(self, now: float) -> None:
        """Evaluate every limit and latch what trips (raises only; transient conditions set/clear).

        The equity breakers (daily loss, drawdown, floor) are functions of the equity, the day and
        their stored anchor, peak and epoch. When none of those moved since their last evaluation
        and the latch is where that evaluation left it, they would trip nothing new (whatever they
        tripped is latched already), so they are not re-run: a flat book's equity does not move
        from bar to bar. A reload of their state (`_reload_risk_state`: a reset) or a latch moved
        by anyone makes the next call evaluate them in full."""
        latched = self.sm.latched.severity
        if self._equity_known:
            eq = self.equity_f = self._equity() if self._pos_f else self._cash_f   # flat: equity is the cash
            if latched != self._equity_checked_at or not self.daily.unchanged(now, eq):
                for trips in (self.daily.update(now, eq), self.drawdown.update(now, eq), self.floor.update(now, eq)):
                    for st, why in trips:
                        if st.severity > latched:
                            self.sm.escalate(st, why)
                self._equity_checked_at = self.sm.latched.severity
        for st, why in self.streak.update(now, 0.0):
            if st.severity > latched:
                self.sm.escalate(st, why)
        for st, why in self.activity.update(now, 0.0):
            if st.severity > latched:
                self.sm.escalate(st, why)
        reason = self.stale.check(now, self.market.last_rejection)
        if reason or self._stale_flag:
            self.sm.set_transient("stale_data", TradingState.REDUCING if reason else None, reason or "")
            self._stale_flag = bool(reason)

    def evaluate(self, now: float) -> None:
        """Breakers, then enforcement (and housekeeping when live): the tail of an iteration."""
        self.breakers(now)
        self.enforce(now)
        if self.live:
            self._housekeeping(now)

    def _reload_risk_state(self) -> None:
        """Re-read what a reset (ours or another process's) changed: streak, peak, anchor, epoch."""
        for breaker in (self.daily, self.drawdown, self.streak, self.floor):
            breaker.load()
        self._equity_checked_at = -1    # the next breakers() evaluates them in full (see there)

    def enforce(self, now: float) -> None:
        state = self.sm.effective
        if state is not _ACTIVE and self.om.has_live:
            # REDUCING: no entries may rest; HALTED and above: nothing but protective orders
            keep_reduce = state is TradingState.REDUCING
            self.om.cancel_where(lambda r: not r["protective"] and not (keep_reduce and r["reduce_only"]))
        if self._pos_f:
            self._enforce_positions(state)
        if self.resting is not None:
            self.resting.converge(self.positions, self.stops.levels, self.market.last)

    def _enforce_positions(self, state: TradingState) -> None:
        """enforce()'s part for open positions: kill, loss overrun, volatility auto-close, stops and targets."""
        if state is _KILLED:
            for sym in list(self._pos_f):
                self.close_position(sym, "killed")
        for sym in list(self._pos_f):
            self._close_on_overrun(sym)
        for sym in list(self._autoclose):
            if sym in self._pos_f:
                self.close_position(sym, "volatility auto-close")
        for sym in list(self._pos_f):
            lp = self.market.last_f.get(sym)
            if lp is None:
                continue
            hit = self.stops.hit(sym, lp)
            if hit == "stop":
                self.close_position(sym, "stop-loss")
            elif hit == "target":
                self.close_position(sym, "take-profit", protective=False)

    def _close_on_overrun(self, sym: str) -> None:
        """Close a position whose loss has outrun its planned risk; latch REDUCING once per position."""
        lp = self.market.last_f.get(sym)
        pos = self.positions.get(sym)
        if lp is None or pos is None or pos.qty <= 0:
            return
        if sym not in self._planned_stop:
            plan = self.store.entry_plan(sym)
            self._planned_stop[sym] = float(plan[0]) if plan else None
        why = self.overrun.check(sym, float(pos.qty), float(pos.avg_price), self._planned_stop[sym], lp)
        if why is None:
            return
        if sym not in self._overrun_alerted:   # alert once per position; the close is retried until flat
            self._overrun_alerted.add(sym)
            log.error("risk overrun: %s; closing the position", why)
            with self.store.tx():
                self.store.audit("loss_overrun", {"instrument": sym, "reason": why, "last": lp})
            self.sm.escalate(TradingState.REDUCING, why)
        self.close_position(sym, "loss beyond planned risk")

    def _housekeeping(self, now: float) -> None:
        if self._equity_known and now - self._last_snapshot >= self.cfg.bot["equity_snapshot_s"]:
            eq, cash, unreal = self.om.equity(self.quote)
            self.store.snapshot_equity(now, eq, cash, unreal)
            self._last_snapshot = now
        if now - self._last_anchor >= audit.ANCHOR_EVERY_S:
            self.anchor_audit_head()
            self._last_anchor = now
        self.update_inhibitor()
        if self.metrics_file:
            from .metrics import write_textfile
            try:
                write_textfile(self.metrics_file, self.status())
            except OSError as e:
                log.warning("metrics file: %s", e)

    def anchor_audit_head(self) -> None:
        """Put the chain head outside the ledger (the journal): a cut-off tail shows against it."""
        seq, mac = self.store.audit_head()
        log.info("audit head: seq %d %s %s", seq, "mac" if self.store.keyed else "sha256 (unkeyed)", mac)

    def record_equity(self) -> None:
        """Persist the equity now (at stop): the next start measures a loss while down from it."""
        if self._equity_known:
            eq, cash, unreal = self.om.equity(self.quote)
            self.store.snapshot_equity(self.clock(), eq, cash, unreal)

    def update_inhibitor(self) -> None:
        if self.inhibitor is None:
            return
        live = self.om.live_rows()
        held = [f"{s} {p.qty}" for s, p in self.positions.items() if self.om.holds(s, p.qty)]
        reason = "; ".join(([f"open positions: {', '.join(held)}"] if held else []) +
                           ([f"{len(live)} live orders"] if live else []))
        self.inhibitor.update(bool(held or live), reason)

    # ---- backtest --------------------------------------------------------------------
    def replay_bar(self, sym: str, bar: Bar, bar_seconds: float) -> None:
        """Feed one historical bar through the live order of work (paper exchange in manual mode)."""
        self.exchange.feed(sym, bar)
        end = bar.ts + bar_seconds
        if self.market.on_tick(sym, bar.close, end):
            self.stale.seen(sym, end)
        sig = self.observe_bar(sym, bar) if self.market.accept_bar(sym, bar) else NO_SIGNAL
        if self.om.has_live:
            self.om.sync_all()
        self.breakers(end)
        if sig is not NO_SIGNAL:
            self.act(sym, sig, bar)
        self.enforce(end)

    # ---- control operations (called from the control thread) ------------------------
    def halt(self, reason: str) -> dict:
        with self.om.lock:
            self.sm.escalate(TradingState.HALTED, f"operator halt: {reason}")
            n = self.om.cancel_where(lambda r: not r["protective"])
        self.update_inhibitor()
        return {"ok": True, "state": self.sm.effective.value, "cancelled": n}

    def flatten(self, timeout_s: float = 30.0) -> dict:
        """Halt, cancel everything, sell every position, then verify on the exchange that we are flat."""
        with self.om.lock:
            self.sm.escalate(TradingState.HALTED, "operator flatten")
            self.om.cancel_where(lambda r: True)
        deadline = time.monotonic() + timeout_s
        attempts = 0
        while True:
            try:
                self.om.sync_all()
                self.om.refresh_account()
                self._on_fill()
                for sym in list(self._pos_f):
                    if self.close_position(sym, "flatten"):
                        attempts += 1
                self.om.sync_all()
                self.om.refresh_account()
                self._on_fill()
                verdict = self.verify_flat()
            except ExchangeError as e:
                verdict = {"flat": False, "error": str(e)}
            if verdict["flat"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.update_inhibitor()
        with self.store.tx():
            self.store.audit("flatten", verdict)
        return {"ok": verdict["flat"], "attempts": attempts, **verdict}

    def verify_flat(self) -> dict:
        """Ask the exchange, not the ledger: no open orders of ours, no base balance above dust."""
        acct = self.exchange.balances()
        open_orders = [o.client_order_id for o in self.exchange.open_orders()
                       if o.client_order_id and o.client_order_id.startswith(self.cfg.bot["instance_id"] + "-")]
        held, dust = {}, {}
        for inst in self.instruments.values():
            amt = acct.total(inst.base)
            if amt >= max(inst.min_qty, inst.step_size):
                held[inst.base] = str(amt)
            elif amt > 0:
                dust[inst.base] = str(amt)
        return {"flat": not held and not open_orders, "holdings": held, "dust": dust, "open_orders": open_orders}

    def reset(self, note: str, new_day: bool = False) -> dict:
        """Back to ACTIVE in a new risk epoch (risk/epoch.py), audited with the operator's note."""
        with self.om.lock:
            eq = self._equity() if self._equity_known else None
            prev = self.sm.reset(note, epoch_meta(self.clock(), eq, new_day, self.cfg.tz))
            self._reload_risk_state()
            self.breakers(self.clock())
        view = self.sm.view()
        log.warning("manual reset from %s (%s): new risk epoch at equity %s; now %s", prev.value, note,
                    "unknown" if eq is None else f"{eq:.2f}", view.state.value)
        out = {"ok": True, "from": prev.value, "state": view.state.value}
        if view.state is not TradingState.ACTIVE:
            out["reason"] = view.reason   # a condition that still holds re-tripped at once: say which
        return out

    # ---- risk view -------------------------------------------------------------------
    def usages(self, now: float) -> list[Usage]:
        exposure = sum(q * float(self.market.last.get(s, (self.positions[s].avg_price, 0))[0]) for s, q in self._pos_f.items())
        peak = self.drawdown.peak or self.equity_f
        floor = self.floor.floor
        # equity floor as a risk view: how much of the cushion between the equity peak and the floor is gone
        floor_use = Usage("equity_floor_cushion", max(0.0, peak - self.equity_f), max(0.0, peak - floor) if floor > 0 else 0.0)
        u = [self.daily.usage(), self.drawdown.usage(), self.streak.usage(), floor_use,
             Usage("total_exposure", exposure, float(self.limits.max_total_exposure)),
             Usage("open_positions", len(self._pos_f), self.limits.max_open_positions),
             Usage("orders_per_minute_throttle", self.activity.count("orders", now), self.limits.max_orders_per_minute),
             *self.activity.usages(now), self.stale.usage(now)]
        u += [Usage(f"volatility_z:{s}", v.z, v.z_enter) for s, v in self.vol.items()]
        return u

    def status(self) -> dict:
        now = self.clock()
        view = self.sm.view()
        prices = self.market.prices()
        positions = []
        for sym, p in self.positions.items():
            if not self.om.holds(sym, p.qty):
                continue
            last = prices.get(sym, (p.avg_price, 0))[0]
            stop = self.stops.levels.get(sym, (None, None))
            positions.append({"instrument": sym, "qty": str(p.qty), "avg_price": str(p.avg_price), "last": str(last),
                              "notional": str(p.qty * last), "unrealized": str(p.qty * (last - p.avg_price)),
                              "stop": str(stop[0]) if stop[0] is not None else None,
                              "resting_stop": self.resting.trigger_of(sym) if self.resting is not None else None,
                              "take_profit": str(stop[1]) if stop[1] is not None else None})
        return {
            "state": view.state.value, "reason": view.reason,
            "since": datetime.fromtimestamp(view.since, timezone.utc).isoformat(),
            "latched": {"state": view.latched.value, "reason": view.latched_reason},
            "conditions": {k: {"state": v[0].value, "reason": v[1]} for k, v in view.transient.items()},
            "equity": f"{self.equity_f:.2f}", "exposure": f"{sum(float(x['notional']) for x in positions):.2f}",
            "positions": positions,
            "open_orders": [{"client_order_id": r["client_order_id"], "instrument": r["instrument"], "side": r["side"],
                             "qty": r["qty"], "filled": r["filled"], "status": r["status"]} for r in self.om.live_rows()],
            "limits": [{"name": x.name, "used": round(x.used, 6), "limit": x.limit, "pct": round(x.pct, 2)}
                       for x in self.usages(now)],
            "dead_man_switch": self._switch_status(),
            "pretrade_us": self.om.pretrade_us(),
            "pid": os.getpid(), "running": True, "steps": self.steps,
        }

    def _switch_status(self) -> str:
        """off (config or backtest), unsupported (venue has none), armed, disarmed, or unknown (a call failed)."""
        if not self.dead_man_on:
            return "off"
        if self.dead_man is None:
            return "unsupported"
        return {True: "armed", False: "disarmed", None: "unknown"}[self.dead_man.armed]
