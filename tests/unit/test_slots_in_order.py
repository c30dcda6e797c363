"""ManageSlots acts on the cycle's own look at PostgreSQL (site_agent.act_pg): with nothing to create
or drop it sends no query; anything to change sends it to the server as before."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from site_agent.act_pg import _slots_in_order

from drctl.pg.probe import SlotInfo


def slot(name: str, active: bool = True, kind: str = "physical") -> SlotInfo:
    return SlotInfo(slot_name=name, slot_type=kind, active=active, restart_lsn=None, wal_status=None)


def test_in_order_only_when_nothing_is_to_create_or_drop() -> None:
    assert _slots_in_order([slot("a"), slot("b")], ["a", "b"])
    assert _slots_in_order([slot("a"), slot("x", active=True)], ["a"])  # an active slot is never dropped
    assert not _slots_in_order([slot("a")], ["a", "b"])  # b to create
    assert not _slots_in_order([slot("a"), slot("x", active=False)], ["a"])  # x to drop
    assert not _slots_in_order([slot("a", kind="logical")], ["a"])  # a logical slot is not the physical one
    assert _slots_in_order([slot("a"), slot("l", active=False, kind="logical")], ["a"])  # logical: not ours
    assert _slots_in_order([], [])


names = st.sampled_from(["a", "b", "c", "d"])


@given(
    st.lists(st.tuples(names, st.booleans(), st.sampled_from(["physical", "logical"])), unique_by=lambda t: t[0]),
    st.lists(names, unique=True),
)
def test_in_order_means_manage_slots_would_do_nothing(seen: list[tuple[str, bool, str]], wanted: list[str]) -> None:
    slots = [slot(n, a, k) for n, a, k in seen]
    physical = {s.slot_name: s for s in slots if s.slot_type == "physical"}
    would_create = [n for n in wanted if n not in physical]
    would_drop = [n for n, s in physical.items() if n not in wanted and not s.active]
    assert _slots_in_order(slots, wanted) == (not would_create and not would_drop)
