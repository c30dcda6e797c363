"""Pure planners of the cross-site operations (DESIGN.md section 5): each is a function of an
:class:`~drctl.sites.plan.Observed` value that returns a :class:`~drctl.sites.plan.Plan` or
refuses with a :class:`~drctl.sites.state.SiteOpError` saying why and what to do. No I/O, no
clock: unit tests build the observed state by hand. This module is their one import point."""

from __future__ import annotations

from drctl.sites.plan import Plan
from drctl.sites.plan_fence import fence_target, plan_confirm, plan_fence, plan_refence
from drctl.sites.plan_promote import LossEstimate, estimate_loss, loss_note, plan_promote, promote_evidence
from drctl.sites.plan_switchover import plan_abort_switchover, plan_finish_switchover, plan_switchover
from drctl.sites.rules import fence_step, is_standby_of, needs_fence

__all__ = [
    "LossEstimate",
    "Plan",
    "estimate_loss",
    "fence_step",
    "fence_target",
    "is_standby_of",
    "loss_note",
    "needs_fence",
    "plan_abort_switchover",
    "plan_confirm",
    "plan_fence",
    "plan_finish_switchover",
    "plan_promote",
    "plan_refence",
    "plan_switchover",
    "promote_evidence",
]
