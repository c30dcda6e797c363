"""An idle replica reads the cluster only when its watch saw a change (drctl/dcs/etcd.py
get_cluster after a quiet watch). Against a real etcd cluster: the view is reused once per watch
that ran to its end without any event, never older than retry_timeout, and every kind of change
(a key deleted behind the agent's back, a lease expiring, a compare-and-swap by another member,
the agent's own member put) is seen by the next read. A member cut from the quorum cannot keep a
quiet watch open."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from typing import Any

import pytest

from drctl.dcs.base import ClusterView, DCSError, MemberInfo
from drctl.dcs.etcd import Etcd3
from drctl.dcs.etcd_client import CHANGED, QUIET, UNKNOWN, EtcdClient
from drctl.dcs.etcd_wire import prefix_range_end
from drctl.dcs.factory import EtcdSettings
from drctl.lab.etcd import EtcdCluster

pytestmark = pytest.mark.integration

NAMESPACE = "/pgdr-quiet"


def _etcd(hosts: list[str], name: str, scope: str, *, ttl: int = 10, retry_timeout: float = 5.0) -> Etcd3:
    return Etcd3(
        EtcdSettings(hosts=hosts), namespace=NAMESPACE, scope=scope, name=name, ttl=ttl, retry_timeout=retry_timeout
    )


def _info(name: str, **kw: Any) -> MemberInfo:
    return MemberInfo(conn_url=f"postgres://{name}:5432/postgres", api_url=f"http://{name}:8008/status", **kw)


def _cluster(hosts: list[str]) -> tuple[str, Etcd3, Etcd3]:
    """A leader and a replica (the watcher), both registered; the watcher's own put settled."""
    scope = f"q-{uuid.uuid4().hex[:10]}"
    leader, replica = _etcd(hosts, "leader", scope), _etcd(hosts, "replica", scope)
    leader.touch_member(_info("leader"))
    replica.touch_member(_info("replica"))
    assert leader.attempt_to_acquire_leader()
    assert leader.set_config({"ttl": 10}, None)
    return scope, leader, replica


def _quiet_round(replica: Etcd3, view: ClusterView, timeout: float = 0.4) -> bool:
    """The replica loop's wait: a watch from its view's revision (Agent._wait)."""
    return replica.watch(view.leader.version if view.leader else None, timeout, since_revision=view.revision)


def test_every_read_is_real_and_an_unchanged_cluster_is_not_parsed_again(etcd_site_a: EtcdCluster) -> None:
    """The stream held open only wakes the wait early; what the member acts on is read every time
    (a stream cut silently must not hide a change). An unchanged cluster's read reuses the parse."""
    _scope, leader, replica = _cluster(etcd_site_a.endpoints)
    view = replica.get_cluster()
    assert _quiet_round(replica, view) is False
    again = replica.get_cluster()
    assert again is not view and again.leader is view.leader and again.members is view.members
    assert leader.set_config({"ttl": 11}, view.config.version if view.config else None)
    changed = replica.get_cluster()  # at once: no stream delivery to wait for
    assert changed.config is not None and changed.config.data.get("ttl") == 11


def test_the_view_is_read_for_real_at_least_every_retry_timeout(etcd_site_a: EtcdCluster) -> None:
    _scope, _leader, replica = _cluster(etcd_site_a.endpoints)
    replica.set_retry_timeout(1.0)
    view = replica.get_cluster()
    time.sleep(1.1)
    assert _quiet_round(replica, view, 0.2) is False
    assert replica.get_cluster() is not view


def _raw_delete(hosts: list[str], key: str) -> None:
    client = EtcdClient(EtcdSettings(hosts=hosts), retry_timeout=3.0)
    try:
        client.call("/kv/deleterange", {"key": base64.b64encode(key.encode()).decode()}, time.monotonic() + 3.0)
    finally:
        client.close()


def test_no_change_is_missed(etcd_site_a: EtcdCluster) -> None:
    """Each change made while the replica waits wakes the watch or, made between the watch and
    the read, is seen by the very next watch: the replica never keeps acting on a view that hides
    it for more than one loop."""
    hosts = etcd_site_a.endpoints
    scope, leader, replica = _cluster(hosts)
    ephemeral = _etcd(hosts, "ephemeral", scope, ttl=2)
    ephemeral.touch_member(_info("ephemeral"))

    def deleted_behind_the_back() -> None:
        _raw_delete(hosts, leader.key("leader"))

    def cas_by_another_member() -> None:
        cfg = leader.get_cluster().config
        assert cfg is not None and leader.set_config({"ttl": 12}, cfg.version)

    def a_lease_expiring() -> None:
        ephemeral.client.close()  # stops renewing: its member key goes with its lease (ttl 2)

    changes = [
        (deleted_behind_the_back, lambda v: v.leader is None),
        (cas_by_another_member, lambda v: v.config is not None and v.config.data.get("ttl") == 12),
        (a_lease_expiring, lambda v: v.member("ephemeral") is None),
    ]
    for change, seen in changes:
        view = replica.get_cluster()
        assert not seen(view)
        out: list[bool] = []
        waiter = threading.Thread(target=lambda v=view, o=out: o.append(_quiet_round(replica, v, 15.0)))
        waiter.start()
        time.sleep(0.2)
        change()
        waiter.join(20)
        assert out == [True], f"{change.__name__}: the watch did not report it"
        assert seen(replica.get_cluster()), f"{change.__name__}: the read after the watch hid it"

    # A change landing after a quiet watch ended and before the read: the read shows it, and a
    # wait from the old view's revision reports it at once.
    leader.touch_member(_info("leader"))
    assert leader.attempt_to_acquire_leader()
    view = replica.get_cluster()
    assert view.leader is not None
    assert _quiet_round(replica, view) is False
    _raw_delete(hosts, leader.key("leader"))
    assert replica.get_cluster().leader is None
    started = time.monotonic()
    assert _quiet_round(replica, view, 10.0) is True
    assert time.monotonic() - started < 5.0, "the next watch did not report the change at once"


def test_the_replicas_own_put_is_not_quiet(etcd_site_a: EtcdCluster) -> None:
    """Its own member puts do not wake the replica, but the view after them is read for real:
    the agent sees its own record as written."""
    _scope, _leader, replica = _cluster(etcd_site_a.endpoints)
    view = replica.get_cluster()
    replica.touch_member(_info("replica", received_lsn=4242))
    assert _quiet_round(replica, view) is False  # not woken by its own put
    fresh = replica.get_cluster()
    assert fresh is not view
    member = fresh.member("replica")
    assert member is not None and member.info.received_lsn == 4242


@pytest.mark.parametrize("held_open", [False, True], ids=["a watch per wait", "the stream held open"])
def test_a_member_cut_from_the_quorum_cannot_hold_a_quiet_watch(etcd_cluster: EtcdCluster, held_open: bool) -> None:
    """The watch asks for a member with a raft leader: when the member the replica talks to loses
    its peers, the watch is refused or cancelled (never QUIET), and the read after it fails. The
    same for the replica's waits on one stream held open across them (drctl.dcs.etcd_stream),
    whatever the view's age."""
    hosts = etcd_cluster.endpoints
    scope = f"q-{uuid.uuid4().hex[:10]}"
    alone = 2
    replica = _etcd([hosts[alone]], "replica", scope, retry_timeout=2.0)
    view = replica.get_cluster()
    prefix = replica.prefix

    def ask(timeout: float) -> str:
        if held_open:
            held = replica._held
            assert held is not None
            return held.wait(view.revision, time.monotonic() + timeout)
        return replica.client.watch_outcome(
            prefix, prefix_range_end(prefix), view.revision + 1, time.monotonic() + timeout
        )

    try:
        if held_open:
            assert _quiet_round(replica, view, 0.5) is False
        assert ask(0.5) == QUIET
        for i in range(3):
            if i != alone:
                etcd_cluster.pause_member(i)
        try:
            outcomes = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                outcomes.append(ask(1.0))
                if outcomes[-1] != QUIET:
                    break
            assert outcomes[-1] in (UNKNOWN, CHANGED), f"a leaderless member kept the watch quiet: {outcomes}"
            assert all(ask(1.0) != QUIET for _ in range(3))
            assert _quiet_round(replica, view, 1.0) is False
            with pytest.raises(DCSError):
                replica.get_cluster()
        finally:
            etcd_cluster.resume_all()
    finally:
        replica.close()


def test_the_held_stream_follows_the_client_to_another_member(etcd_cluster: EtcdCluster) -> None:
    """A member that stops answering (SIGSTOP) keeps its TCP connections open and silent: the
    stream on it cannot say so. Reads fail over to another member, and the next wait moves the
    stream there: changes made meanwhile are reported, not hidden behind a silent stream."""
    hosts = etcd_cluster.endpoints
    scope = f"q-{uuid.uuid4().hex[:10]}"
    leader = _etcd(hosts, "leader", scope)
    replica = _etcd(hosts, "replica", scope, retry_timeout=2.0)
    try:
        leader.touch_member(_info("leader"))
        assert leader.attempt_to_acquire_leader()
        view = replica.get_cluster()
        assert _quiet_round(replica, view, 0.3) is False
        frozen = replica.client.endpoints.index(replica.client.preferred_endpoint())
        frozen_url = replica.client.endpoints[frozen]
        etcd_cluster.pause_member(frozen)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # reads fail over (a new raft leader may be elected first)
                try:
                    view = replica.get_cluster()
                except DCSError:
                    continue
                if replica.client.preferred_endpoint() != frozen_url:
                    break
            assert replica.client.preferred_endpoint() != frozen_url
            other = _etcd([h for i, h in enumerate(hosts) if i != frozen], "other", scope)
            try:
                assert other.set_config({"ttl": 15}, None)
            finally:
                other.close()
            assert _quiet_round(replica, view, 10.0) is True, "the change was hidden by the frozen member's stream"
        finally:
            etcd_cluster.resume_all()
    finally:
        replica.close()
        leader.close()
