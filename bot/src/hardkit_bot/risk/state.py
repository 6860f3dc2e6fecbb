"""The trading state machine: ACTIVE -> REDUCING -> HALTED -> KILLED.

Latched: breakers and operators can only *raise* the latched state; only an
explicit operator `reset` lowers it. The state, its reason and the time are
persisted in the ledger with an audit record and restored at start, so neither
a restart nor a midnight rollover clears a halt.

The ledger is the one source of truth: `refresh()` (every live iteration, and
inside every change) adopts a latch written by any other process, so the bot and
anything reading the ledger never disagree. When the ledger and its state file
disagree at start (`Store.latch_doubt`), the bot boots HALTED (or KILLED if
either copy says so), never ACTIVE.

Transient conditions (stale market data, the volatility breaker) are separate:
they raise the *effective* state while they hold and clear themselves with
hysteresis; they never touch the latch.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..model import TradingState
from ..store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateView:
    state: TradingState          # effective: max(latched, transient)
    reason: str
    since: float
    latched: TradingState
    latched_reason: str
    transient: dict[str, tuple[TradingState, str]]


class StateMachine:
    def __init__(self, store: Store, clock):
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._latched, self._reason, self._since = store.get_state()
        self._transient: dict[str, tuple[TradingState, str]] = {}
        if store.latch_doubt:
            self._boot_in_doubt(store.latch_doubt)

    def _boot_in_doubt(self, doubt: str) -> None:
        on_file = self.store.file_latch
        target = max((TradingState.HALTED, self._latched, TradingState(on_file.state) if on_file else TradingState.HALTED),
                     key=lambda s: s.severity)
        reason = f"latched state in doubt at start: {doubt}"
        now = self.clock()
        log.error("%s -> %s", reason, target.value)
        self.store.set_state(target, reason, now, self._latched)
        self._latched, self._reason, self._since = target, reason, now

    @property
    def latched(self) -> TradingState:
        return self._latched

    def refresh(self) -> bool:
        """Adopt the ledger's latch if someone else changed it. Returns True on a change."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> bool:
        st, reason, since = self.store.get_state()
        if (st, since) == (self._latched, self._since):
            return False
        log.warning("latched state changed in the ledger by another writer: %s -> %s (%s)",
                    self._latched.value, st.value, reason)
        self._latched, self._reason, self._since = st, reason, since
        return True

    def escalate(self, state: TradingState, reason: str) -> bool:
        """Raise the latched state (never lowers it). Returns True if it changed."""
        with self._lock:
            self._refresh()
            if state.severity <= self._latched.severity:
                return False
            now = self.clock()
            self.store.set_state(state, reason, now, self._latched)
            # The notifier (hardkit-alert, roles/alert_notify.py BOT_STATE_RE) follows this line in the journal.
            log.warning("trading state %s -> %s: %s", self._latched.value, state.value, reason)
            self._latched, self._reason, self._since = state, reason, now
            return True

    def restate(self, reason: str) -> None:
        """Keep the latched state and record `reason` for it (audited): an operator's halt that
        found the state already latched by a doubt settled at this very start keeps their words."""
        with self._lock:
            self._refresh()
            now = self.clock()
            self.store.set_state(self._latched, reason, now, self._latched)
            self._reason, self._since = reason, now

    def reset(self, operator_note: str, epoch: dict[str, Any] | None = None) -> TradingState:
        """Manual reset to ACTIVE (the only way down), starting a new risk epoch: `epoch`
        holds the meta changes (peak, streak, anchor, ...) written in the same transaction.
        Returns the state it left."""
        with self._lock:
            self._refresh()
            prev = self._latched
            now = self.clock()
            reason = f"manual reset: {operator_note}"
            self.store.set_state(TradingState.ACTIVE, reason, now, prev, meta=epoch, audit_kind="reset",
                                 note={"note": operator_note})
            self._latched, self._reason, self._since = TradingState.ACTIVE, reason, now
            return prev

    def set_transient(self, name: str, state: TradingState | None, reason: str = "") -> bool:
        """Raise or clear a self-clearing condition. Returns True on change (audited)."""
        with self._lock:
            cur = self._transient.get(name)
            if state is None:
                if cur is None:
                    return False
                del self._transient[name]
                self._audit_transient(name, None, "cleared")
                return True
            if cur is not None and cur[0] is state:
                return False
            self._transient[name] = (state, reason)
            self._audit_transient(name, state, reason)
            return True

    def _audit_transient(self, name: str, state: TradingState | None, reason: str) -> None:
        with self.store.tx():
            self.store.audit("condition", {"name": name, "state": state.value if state else None, "reason": reason})

    def view(self) -> StateView:
        with self._lock:
            state, reason = self._latched, self._reason
            for st, why in self._transient.values():
                if st.severity > state.severity:
                    state, reason = st, why
            return StateView(state, reason, self._since, self._latched, self._reason, dict(self._transient))

    @property
    def effective(self) -> TradingState:
        state = self._latched
        for st, _ in self._transient.values():
            if st.severity > state.severity:
                state = st
        return state
