"""Lease-based fencing on the agent's side (policy ``witness_fencing``; docs/cross-site.md).

While its site is active, every member keeps an active lease in each lease store (the witness and
the other site's DCS: drctl.sites.activelease), from one background thread per store so that a
slow or cut WAN never delays a cycle. The pure rule (:func:`lease_hold`): a member may be (or
become) writable only while a renewal it *sent* at ``t`` and that etcd granted ``ttl`` for, in
any store, leaves ``t + ttl - margin`` ahead of the time its next cycle may act
(``loop_wait + retry_timeout``). A member that reaches either store is in the majority of the
three locations and keeps writing; one that reaches neither demotes before the lease can expire
anywhere, and only then may ``promote-site`` take the expiry as evidence.

Turning the setting off is a retraction: the lease keeps being renewed with ``enforced: false``
until every store has recorded it, and the member keeps obeying the rule until then (a controller
that still reads an enforced lease would otherwise take its expiry as evidence).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from drctl.dcs.base import DCSError
from drctl.sites.activelease import LeaseRefused, LeaseStore, Renewal, StoreSpec

log = structlog.get_logger("site_agent.crosssite")


@dataclass(frozen=True)
class Want:
    """What the renewer threads should hold: ``site``'s lease at ``epoch``, asked with ``ttl``."""

    site: str
    epoch: int
    ttl: int
    enforced: bool


@dataclass(frozen=True)
class StoreState:
    store: str
    last_ok: Renewal | None = None
    enforced: bool | None = None  # the flag of the last successful renewal
    error: str | None = None
    attempts: int = 0


# ---------------------------------------------------------------------------------------------
# The pure rule


def lease_deadline(states: Mapping[str, StoreState], margin: float) -> float | None:
    """Monotonic time by which this member must no longer be writable: the latest expiry any
    store may have (sent time + TTL granted), minus ``margin``. None: never renewed anywhere."""
    ends = [s.last_ok.sent_at + s.last_ok.granted_ttl for s in states.values() if s.last_ok is not None]
    return max(ends) - margin if ends else None


def lease_hold(states: Mapping[str, StoreState], now: float, margin: float, reaction: float) -> str | None:
    """None when this member may be writable; otherwise why not. ``reaction`` is the longest a
    cycle may take to act after this one (loop_wait + retry_timeout)."""
    deadline = lease_deadline(states, margin)
    if deadline is not None and now + reaction < deadline:
        return None
    errors = "; ".join(
        f"{s.store}: {s.error or 'no answer yet'}" for s in sorted(states.values(), key=lambda x: x.store)
    )
    if deadline is None:
        return f"active lease not held in any lease store yet ({errors}): read-only until one answers"
    return (
        f"active lease not renewed in any lease store ({errors}): read-only {deadline - now:.1f}s before it could "
        "expire (this site cannot reach the witness nor the other site: the other site may be promoted)"
    )


def retracted(states: Mapping[str, StoreState]) -> bool:
    """Every store has recorded ``enforced: false`` (the setting was turned off)."""
    return bool(states) and all(s.enforced is False for s in states.values())


# ---------------------------------------------------------------------------------------------
# The renewer threads


class ActiveLease:
    """One renewer thread per lease store; :meth:`states` never blocks on the network."""

    def __init__(
        self, stores: list[StoreSpec], member: str, interval: float, timeout: float, stop: threading.Event
    ) -> None:
        self.member = member
        self.interval = interval
        self.timeout = timeout
        self._stop = stop
        self._lock = threading.Lock()
        self._want: Want | None = None
        self._position: int | None = None  # the site's last published WAL position, for the marker
        self._states = {s.name: StoreState(s.name) for s in stores}
        self._wake = threading.Event()  # a new wish: renew now rather than after the interval
        self._threads = [
            threading.Thread(target=self._run, args=(s,), name=f"lease-{s.name}", daemon=True) for s in stores
        ]
        for t in self._threads:
            t.start()

    def update(self, want: Want | None) -> bool:
        """Set what to hold. True when earlier renewals stopped counting (first wish, new epoch):
        the caller may then :meth:`wait_first`."""
        with self._lock:
            reset = want != self._want and (want is None or self._want is None or want.epoch != self._want.epoch)
            if reset:
                self._states = {n: StoreState(n) for n in self._states}
            changed = want != self._want
            self._want = want
        if changed:
            self._wake.set()
        return reset and want is not None

    def set_position(self, lsn: int | None) -> None:
        """The site's WAL position as last published (its leader's status key): each renewal
        records it in the store's marker, so that promote-site can estimate the loss from it
        when this site cannot be reached. Not part of the wish: it never voids a renewal."""
        with self._lock:
            self._position = lsn

    def wait_first(self, timeout: float) -> None:
        """Wait (bounded) until every store has answered or failed once: when enforcement starts
        on a running primary, its first cycle must not demote it just because no renewal had
        been attempted yet. Only at that moment: the agent loop never waits on the WAN otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            with self._lock:
                if all(s.attempts > 0 for s in self._states.values()):
                    return
            time.sleep(0.02)

    def states(self) -> dict[str, StoreState]:
        with self._lock:
            return dict(self._states)

    def _run(self, spec: StoreSpec) -> None:
        store = LeaseStore(spec, self.member, self.timeout)
        try:
            while not self._stop.is_set():
                with self._lock:
                    want = self._want
                if want is None:
                    store.revoke()
                else:
                    self._renew_once(store, spec.name, want)
                self._wake.wait(self.interval)
                self._wake.clear()
        finally:
            store.revoke()
            store.close()

    def _renew_once(self, store: LeaseStore, name: str, want: Want) -> None:
        error: str | None = None
        renewal: Renewal | None = None
        refused = False
        try:
            with self._lock:
                position = self._position
            renewal = store.renew(want.site, want.epoch, want.ttl, want.enforced, position)
        except LeaseRefused as exc:
            error, refused = str(exc), True
            log.warning("cross-site: active lease refused", store=name, error=error)
        except DCSError as exc:
            error = str(exc)
        except Exception as exc:  # a bug or a malformed answer must not kill the renewer
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            prev = self._states[name]
            if refused:
                # The store names another active site and the lease there was revoked: what was
                # renewed there no longer counts, whatever the wish is now.
                self._states[name] = StoreState(name, None, prev.enforced, error, prev.attempts + 1)
            elif self._want != want:
                return  # the wish changed while this renewal was in flight: not counted
            elif renewal is not None:
                self._states[name] = StoreState(name, renewal, want.enforced, None, prev.attempts + 1)
            else:
                self._states[name] = replace(prev, error=error, attempts=prev.attempts + 1)


def lease_doc(states: Mapping[str, StoreState], now: float, margin: float, enforcing: bool) -> dict[str, Any]:
    """The active lease as /status shows it."""
    deadline = lease_deadline(states, margin)
    return {
        "enforcing": enforcing,
        "writable_for_s": round(deadline - now, 1) if deadline is not None else None,
        "stores": {
            n: {
                "ok": s.error is None and s.last_ok is not None,
                "last_renewal_age_s": round(now - s.last_ok.sent_at, 1) if s.last_ok else None,
                "granted_ttl": s.last_ok.granted_ttl if s.last_ok else None,
                "error": s.error,
            }
            for n, s in sorted(states.items())
        },
    }
