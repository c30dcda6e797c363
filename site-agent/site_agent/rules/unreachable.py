"""Rule 1 of :func:`site_agent.decide.decide`: the DCS is unreachable."""

from __future__ import annotations

from site_agent.actions import Action, Decision, Demote, FailsafeHold, NoOp, StartPostgres
from site_agent.rules.context import dec, observed_role
from site_agent.state import PG_DOWN, DataDirState, DecideConfig, LocalState


def dcs_unreachable(local: LocalState, cfg: DecideConfig, now: float) -> Decision:
    err = local.dcs_error or "unknown error"
    role = observed_role(local, local.am_leader, cfg.standby_cluster is not None)
    # A demoted primary comes back read-only (no upstream) while the DCS is away: reads keep
    # working and, once the DCS answers, the node is judged and rejoins like any replica. A start
    # that failed is tried again, once per loop, as the replica rule does with the DCS reachable:
    # read-only it cannot fork anything, and whatever made it fail may have cleared.
    startable = local.data_dir is DataDirState.VALID and not local.rewind_failed  # invariant 4
    read_only: list[Action] = [StartPostgres("replica", None, None)] if startable else []
    if not local.is_primary:
        if not cfg.pause and local.pg in PG_DOWN and startable:
            return dec(read_only, f"DCS unreachable ({err}); starting PostgreSQL read-only (no upstream)", role)
        return dec([NoOp()], f"DCS unreachable ({err}); not a primary, nothing to do", role)
    if cfg.pause:
        return dec([NoOp()], f"DCS unreachable ({err}); paused: leaving the primary alone", role)
    if cfg.failsafe_mode and local.am_leader and local.failsafe_members:
        others = [m for m in local.failsafe_members if m != local.name]
        missing = sorted(set(others) - local.failsafe_acks)
        if not missing:
            return dec(
                [FailsafeHold()],
                f"DCS unreachable ({err}); failsafe: all {len(others)} members confirmed, staying primary",
                "primary",
            )
        return dec(
            [Demote("immediate"), *read_only],
            f"DCS unreachable ({err}); failsafe: no confirmation from {', '.join(missing)}: demoting, "
            "restarting read-only",
            "demoted",
        )
    return dec(
        [Demote("immediate"), *read_only],
        f"DCS unreachable ({err}) and I am a primary: demoting, restarting read-only",
        "demoted",
    )
