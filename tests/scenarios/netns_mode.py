"""The scenario suite's lab switch: ``PGDR_LAB_MODE=netns`` runs the lab-backed scenario fixtures
(``make_cluster``/``steady``/``instruments`` and the two-site fixtures) on the multi-host lab of
drctl.lab.netns instead of the loopback lab; unset (or ``loopback``) changes nothing.

In netns mode each cluster (or two-site lab) is a lab of its own: every node, etcd member and
entry point on a host (network namespace) of its own, faults cut links for real and both ways.
The test itself runs as a client of that network: for the duration of the test the main thread
(and every thread and process it starts: the writer, drctl) lives on the lab's application host
(a one-site lab) or the operators' host (two sites), where 127.0.0.1:<port> reaches the lab server
owning that port (drctl.lab.netns.harness_loopback). A node's PostgreSQL console (its Unix
socket, what the dual-primary checker reads) and its agent seen from its own host are never cut.

Tests that need what only the loopback lab has (TCP proxies, TLS, pgBackRest, several clusters
on one etcd) are skipped in netns mode with the reason (``pytest -rs`` prints them)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from drctl.lab.cluster import LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import LabState, topology_path
from drctl.lab.netns import NetnsLab, harness_loopback
from drctl.lab.netns_hosts import NetnsCluster
from drctl.lab.nsutil import in_netns, netns_support
from drctl.lab.sitebuild import LabLayout
from drctl.sites.controller import read_sites
from drctl.sites.topology import load_topology

MODES = ("loopback", "netns")


def lab_mode() -> str:
    mode = os.environ.get("PGDR_LAB_MODE", "loopback") or "loopback"
    if mode not in MODES:
        raise pytest.UsageError(f"PGDR_LAB_MODE={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def netns_mode() -> bool:
    return lab_mode() == "netns"


# Loopback-only tests: what they need and the netns lab has not (or cuts differently). Keys are
# test node ids as in SLOW (file::name, parameters included or not).
LOOPBACK_ONLY = {
    "test_cross_site.py::test_partition_between_sites_never_promotes_and_heals": (
        "SIGSTOPs the loopback entry point as the only cross-site link; in netns mode the WAN is cut at "
        "the router (test_site_disaster's WAN tests)"
    ),
    "test_slot_retention.py": "dr_slots (cross-site replication slots) are not built by the netns lab",
    "test_site_disaster.py::test_standby_site_catches_up_through_its_slot_without_a_reclone": (
        "dr_slots (cross-site replication slots) are not built by the netns lab"
    ),
    "test_tls_lab.py": "the netns lab runs without TLS",
    "test_backup_agent.py": "the netns lab runs without pgBackRest",
    "test_restore_drill_lab.py": "the netns lab runs without pgBackRest",
    "test_entrypoint_lab.py": "renders loopback entry points; the netns route is test_netns_clients.py",
    "test_callbacks_lab.py": "callbacks on loopback; in netns mode the VIP test (test_netns_clients.py) runs them",
    "test_site_disaster.py::test_active_site_keeps_writing_through_a_wan_cut_and_failover_waits_for_confirmation"
    "[no-witness]": (
        "its operator confirms from inside site a during the WAN cut, while the netns harness's one operators' "
        "host sits beside the standby site (cut from the active site's DCS with the WAN)"
    ),
    # They build their own loopback lab instead of using the fixtures: in netns mode they would
    # still run on loopback, which a netns run must not claim.
    "test_safety_modes.py::test_failsafe_keeps_the_primary_while_every_member_answers": (
        "a DCS outage as SIGSTOP of a private loopback etcd (its own cluster, not make_cluster)"
    ),
    "test_hostile_pg_user.py": "file-permission attacks on the agent's directories: its own loopback cluster",
    "test_site_loss_drill_lab.py": "its own loopback two-site lab; the netns site loss is bench.chaos_sites --netns",
}


def loopback_only_reason(nodeid: str) -> str | None:
    name = nodeid.split("/")[-1]
    for key, why in LOOPBACK_ONLY.items():
        if name == key or name.startswith(key + "[") or name.split("::")[0] == key:
            return why
    return None


def skip_loopback_only(items: list[pytest.Item]) -> None:
    """In netns mode, mark the loopback-only tests skipped, each with its reason."""
    if not netns_mode():
        return
    why = netns_support()
    for item in items:
        name = item.nodeid.split("/")[-1]
        if name.startswith("test_netns_"):
            continue  # netns-native: they build their own labs
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=f"PGDR_LAB_MODE=netns but no network namespaces here: {why}"))
            continue
        reason = loopback_only_reason(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"loopback only: {reason}"))


# --- one site ----------------------------------------------------------------------------------

# LabCluster keyword arguments and what the netns lab does with them: proxies are replaced by real
# cuts (NetnsCluster.isolate_* cut links), the rest has no netns counterpart.
_CUT_INSTEAD = ("dcs_proxies", "node_proxies")
_UNSUPPORTED = ("backup", "tls_ca", "mtls", "etcd_tls", "etcd_auth", "namespace")


class NetnsClusters:
    """``make_cluster`` in netns mode: each call a one-site netns lab; the test runs on its
    application host (``a-cli``) until teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.labs: list[NetnsLab] = []
        self.harness = contextlib.ExitStack()

    def make(self, size: int = 3, **kwargs: Any) -> LabCluster:
        for key in _UNSUPPORTED:
            if kwargs.get(key):
                pytest.skip(f"loopback only: the netns lab has no {key}")
        for key in _CUT_INSTEAD:
            kwargs.pop(key, None)
        if self.labs:
            pytest.skip("loopback only: two clusters in one test (the netns harness is a host of one lab)")
        unknown = set(kwargs) - {"timings", "fencing", "dynamic", "tags"}
        if unknown:
            raise TypeError(f"netns make_cluster: unsupported arguments {sorted(unknown)}")
        lab = NetnsLab(self.base / f"nlab{len(self.labs) + 1}")
        self.labs.append(lab)
        layout = LabLayout(sites=1, nodes=size, timings=kwargs.pop("timings", None), dr=False)
        state = lab.up(layout, **kwargs)
        cluster = lab.built[0]
        fab = lab.load_fabric()
        harness_loopback(fab, "a-cli", lab.loopback_targets(state))
        self.harness.enter_context(in_netns(fab.host("a-cli").ns))
        return cluster

    def close(self) -> None:
        self.harness.close()  # back to the root namespace first
        for lab in self.labs:
            lab.down(grace=20)


# --- two sites ---------------------------------------------------------------------------------


class NetnsSites(NetnsLab):
    """The two-site fixtures' lab in netns mode: ``Lab``'s ``up``/``down`` with the netns lab
    underneath; between them the test runs on the operators' host (drctl and the writer there)."""

    def __init__(self, lab_dir: Path) -> None:
        super().__init__(lab_dir)
        self._harness = contextlib.ExitStack()

    def up(self, layout: LabLayout = LabLayout(), **kwargs: Any) -> LabState:
        if kwargs.get("dr_slots"):
            pytest.skip("loopback only: dr_slots (cross-site replication slots) are not built by the netns lab")
        for key in ("backup", "tls", "mtls"):
            if kwargs.get(key):
                pytest.skip(f"loopback only: the netns lab has no {key}")
        kwargs.pop("wan_proxies", None)  # the WAN is cut at the router (cut_wan), no proxies needed
        state = super().up(layout, **kwargs)
        try:
            fab = self.load_fabric()
            harness_loopback(fab, "ops", self.loopback_targets(state))
            self._harness.enter_context(in_netns(fab.host("ops").ns))
        except BaseException:
            self.down(grace=10)
            raise
        return state

    def cut_wan(self) -> None:
        """The WAN cut at the router; the operator (this test, on the operators' host) sits beside
        the standby site, so it loses the active site's DCS too, as on loopback where its DCS
        paths cross the WAN proxies (it still reaches every node and entry point as a client)."""
        actives = [
            name for name, st in read_sites(load_topology(topology_path(self.dir))).items() if st.role == "active"
        ]
        super().cut_wan()
        if len(actives) == 1:
            self.cut_operator_from(actives[0])

    def heal_wan(self) -> None:
        super().heal_wan()
        self.heal_operator()

    def clusters(self, state: LabState | None = None) -> list[NetnsCluster]:
        clusters = super().clusters(state)
        for c in clusters:  # the settings up() built them with (timings, fencing)
            built = next((b for b in self.built if b.site == c.site), None)
            if built is not None:
                c.timings = built.timings
        return clusters

    def down(self, grace: float = 15.0) -> dict[str, list[str]]:
        self._harness.close()
        return super().down(grace)


def scenario_lab(lab_dir: Path) -> Lab | NetnsSites:
    """The two-site fixtures' lab in the suite's mode."""
    return NetnsSites(lab_dir) if netns_mode() else Lab(lab_dir)
