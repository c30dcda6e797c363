"""The hostile fault kinds of issue 12 for ``make chaos``: a configuration change mid-flight, a
corrupt DCS key, and a paused VM fenced by the fencing hook. Each returns the same notes as
:func:`bench.scenarios.inject` (``fault_at``, ``heal_at`` and what it did)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from drctl.lab.cluster import LabCluster, Timings

HOSTILE_FAULTS = ["config_change", "corrupt_key", "paused_vm"]

# (ttl, loop_wait, retry_timeout) the campaign switches between; each keeps invariant 2.
SETTINGS = [(10, 1, 3), (20, 2, 4), (15, 1, 5), (12, 2, 3)]

GARBAGE = [b"{not json", b"\xff\xfe\x00", b"[1, 2", b'"text"', b"42", b"null", b'{"x": [}']


def _set_dynamic(c: LabCluster, changes: dict[str, Any]) -> dict[str, Any] | None:
    dcs = c.dcs()
    try:
        view = dcs.get_cluster()
        old = dict(view.config.data) if view.config is not None else None
        if old is None:
            return None
        dcs.set_config({**old, **changes}, view.config.version if view.config else None)
        return old
    finally:
        dcs.close()


def config_change(
    c: LabCluster, target: str, timings: Timings, mark: Callable[[str], float], rng: random.Random
) -> dict[str, Any]:
    """Switch ttl/loop_wait/retry_timeout, then freeze the leader's agent at once (its lease was
    granted with the old ttl) past the longer ttl; resume."""
    choices = [s for s in SETTINGS if s[0] != timings.ttl] or SETTINGS
    ttl, loop_wait, retry = rng.choice(choices)
    fault_at = mark(f"config ttl={ttl} loop_wait={loop_wait} retry_timeout={retry}, then SIGSTOP {target}'s agent")
    before = _set_dynamic(c, {"ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry})
    time.sleep(rng.uniform(0.0, 2.0))
    c.pause_agent(target)
    old_ttl = int((before or {}).get("ttl", timings.ttl))
    time.sleep(max(ttl, old_ttl) + 10.0)
    heal_at = mark(f"SIGCONT {target}'s agent")
    c.resume_agent(target)
    return {
        "fault_at": fault_at,
        "heal_at": heal_at,
        "settings": [ttl, loop_wait, retry],
        "settings_before": [old_ttl, (before or {}).get("loop_wait"), (before or {}).get("retry_timeout")],
    }


def corrupt_key(
    c: LabCluster, target: str, timings: Timings, mark: Callable[[str], float], rng: random.Random
) -> dict[str, Any]:
    """Write garbage into one key; the config key is restored by hand after a while (nobody else
    owns it), every other key must be repaired by its owner or read safely meanwhile."""
    view = c.view()
    key = rng.choice(["config", "history", "sync", "failover", "status", "failsafe", "leader", "members"])
    garbage = rng.choice(GARBAGE)
    lease = None
    if key == "leader":
        lease = view.leader.session if view is not None and view.leader is not None else None
    if key == "members":
        key = f"members/{target}"
        member = view.member(target) if view is not None else None
        lease = member.session if member is not None else None
    good = dict(view.config.data) if view is not None and view.config is not None else None
    fault_at = mark(f"corrupt DCS key {key} with {garbage!r}")
    c.put_raw(key, garbage, lease)
    time.sleep(timings.ttl + 5.0)
    heal_at = mark(f"restore {key}" if key == "config" else f"{key} left to its owner")
    if key == "config" and good is not None:
        c.put_raw("config", json.dumps(good, sort_keys=True).encode())
    after = c.view()
    return {
        "fault_at": fault_at,
        "heal_at": heal_at,
        "key": key,
        "garbage": garbage.decode("latin-1"),
        "still_corrupt": sorted(k.key for k in after.corrupt) if after is not None else None,
    }


def paused_vm(
    c: LabCluster,
    target: str,
    timings: Timings,
    mark: Callable[[str], float],
    rng: random.Random,
    took_over: Callable[[float], bool],
) -> dict[str, Any]:
    """Agent, lease keeper and PostgreSQL all SIGSTOPped (a paused VM). With the fencing hook a
    replica powers the node off before it promotes; the VM then resumes (nothing is left of it)
    and boots again (its agent restarted)."""
    if not c.fencing:
        raise ValueError("paused_vm needs a cluster with the fencing hook (chaos --fencing)")
    fault_at = mark(f"SIGSTOP agent+keeper+postgres of {target} (paused VM)")
    pids = c.freeze_node(target, ["agent", "keeper", "postgres"])
    took = took_over(timings.ttl + 60.0)
    time.sleep(rng.uniform(0.5, 3.0))
    order = ["agent", "keeper", "postgres"]
    rng.shuffle(order)
    c.thaw_node(pids, order)
    time.sleep(1.0)
    rec = c.sup.record(c.node(target).proc_name)
    fenced = rec is None or not rec.alive()
    heal_at = mark(f"VM {target} resumed ({'+'.join(order)})" + (" and booted again" if fenced else ""))
    if fenced:
        c.start_agent(target)
    return {"fault_at": fault_at, "heal_at": heal_at, "took_over": took, "fenced": fenced, "thaw_order": order}
