"""What an idle cluster costs etcd (issue 18): a leader renewal with an unchanged status writes
nothing, and a replica's watch counted from its view's revision wakes for other members'
changes, not for its own member-key puts. Real etcd (the session's site-a cluster)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from drctl.dcs.base import ClusterView, LeaderStatus, MemberInfo
from drctl.dcs.etcd import Etcd3
from drctl.dcs.etcd_wire import b64
from drctl.dcs.factory import EtcdSettings
from drctl.lab.etcd import EtcdCluster

NAMESPACE = "/pgdr-test-idle"


def _etcd(cluster: EtcdCluster, name: str, scope: str, ttl: int = 10) -> Etcd3:
    return Etcd3(
        EtcdSettings(hosts=cluster.endpoints), namespace=NAMESPACE, scope=scope, name=name, ttl=ttl, retry_timeout=3.0
    )


def _info(name: str, lsn: int = 0) -> MemberInfo:
    return MemberInfo(
        conn_url=f"postgres://{name}:5432/postgres", api_url=f"http://{name}:8008/status", received_lsn=lsn
    )


def _status_version(dcs: Etcd3) -> int | None:
    view = dcs.get_cluster()
    return view.status.version if view.status is not None else None


def test_an_unchanged_status_is_not_rewritten_every_renewal(etcd_site_a: EtcdCluster) -> None:
    scope = f"idle-{uuid.uuid4().hex[:8]}"
    leader = _etcd(etcd_site_a, "a", scope, ttl=4)
    leader.touch_member(_info("a"))
    assert leader.attempt_to_acquire_leader()
    assert leader.update_leader(LeaderStatus(lsn=100))
    first = _status_version(leader)
    assert first is not None
    revision = leader.get_cluster().revision
    for _ in range(3):
        assert leader.update_leader(LeaderStatus(lsn=100))
    assert _status_version(leader) == first
    assert leader.get_cluster().revision == revision, "an idle renewal changed the store"
    # A new LSN is written at once; the same value again after ttl only when the member cannot
    # see it as written: here every renewal follows a read that shows it (someone removing it:
    # test_keys_still_as_written_are_not_rewritten_while_the_last_read_shows_them).
    assert leader.update_leader(LeaderStatus(lsn=200))
    second = _status_version(leader)
    assert second is not None and second > first
    assert leader.get_cluster().status.lsn == 200  # type: ignore[union-attr]
    written_at = time.monotonic()
    versions = []
    while time.monotonic() - written_at < 5.5:
        time.sleep(0.5)
        assert leader.update_leader(LeaderStatus(lsn=200))
        versions.append((time.monotonic() - written_at, _status_version(leader)))
    assert all(v == second for _t, v in versions), versions
    # Without a recent read (none for longer than retry_timeout), the ttl rule writes it again.
    time.sleep(leader.retry_timeout + 0.1)
    assert leader.update_leader(LeaderStatus(lsn=200))
    third = _status_version(leader)
    assert third is not None and third > second


def test_status_is_written_again_after_losing_and_retaking_the_key(etcd_site_a: EtcdCluster) -> None:
    scope = f"idle-{uuid.uuid4().hex[:8]}"
    a, b = _etcd(etcd_site_a, "a", scope), _etcd(etcd_site_a, "b", scope)
    assert a.attempt_to_acquire_leader()
    assert a.update_leader(LeaderStatus(lsn=100))
    assert a.delete_leader()
    assert b.attempt_to_acquire_leader()
    assert b.update_leader(LeaderStatus(lsn=300))
    assert b.delete_leader()
    assert a.attempt_to_acquire_leader()
    assert a.update_leader(LeaderStatus(lsn=100))  # the same value a wrote before: b's is in the key now
    assert a.get_cluster().status.lsn == 100  # type: ignore[union-attr]


def _watch(dcs: Etcd3, since: int, timeout: float) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        out.append(dcs.watch(None, timeout, since_revision=since))
        out.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_watch_from_the_views_revision(etcd_site_a: EtcdCluster) -> None:
    scope = f"idle-{uuid.uuid4().hex[:8]}"
    leader, replica = _etcd(etcd_site_a, "a", scope), _etcd(etcd_site_a, "b", scope)
    leader.touch_member(_info("a"))
    replica.touch_member(_info("b"))
    assert leader.attempt_to_acquire_leader()
    view = replica.get_cluster()

    # Nothing changed since the view: False after the timeout.
    started = time.monotonic()
    assert replica.watch(None, 0.8, since_revision=view.revision) is False
    assert time.monotonic() - started >= 0.7

    # The replica's own member put after the view does not wake it ...
    replica.touch_member(_info("b", lsn=5))
    started = time.monotonic()
    assert replica.watch(None, 0.8, since_revision=view.revision) is False
    assert time.monotonic() - started >= 0.7

    # ... a change by another member made after the view, before the watch, returns at once ...
    assert leader.update_leader(LeaderStatus(lsn=42))
    started = time.monotonic()
    assert replica.watch(None, 5.0, since_revision=view.revision) is True
    assert time.monotonic() - started < 1.0

    # ... and one made during the watch wakes it (the leader key deleted).
    view = replica.get_cluster()
    thread, out = _watch(replica, view.revision, 10.0)
    time.sleep(0.5)
    assert leader.delete_leader()
    deleted_at = time.monotonic()
    thread.join(12)
    assert out and out[0] is True
    assert out[1] - deleted_at < 1.0

    # Another member's member put wakes it too.
    view = replica.get_cluster()
    thread, out = _watch(replica, view.revision, 10.0)
    time.sleep(0.5)
    leader.touch_member(_info("a", lsn=77))
    put_at = time.monotonic()
    thread.join(12)
    assert out and out[0] is True
    assert out[1] - put_at < 1.0


def test_keys_still_as_written_are_not_rewritten_while_the_last_read_shows_them(etcd_site_a: EtcdCluster) -> None:
    """A member whose last read (less than retry_timeout ago, after its last write) shows its keys
    as it wrote them does not rewrite its member key or its leader status every ttl: every such
    put would wake every replica. A key removed or changed behind its back is written again at
    the next renewal or touch after a read that shows it."""
    scope = f"idle-{uuid.uuid4().hex[:8]}"
    leader = _etcd(etcd_site_a, "a", scope, ttl=2)
    try:
        leader.touch_member(_info("a"))
        assert leader.attempt_to_acquire_leader()
        assert leader.update_leader(LeaderStatus(lsn=7))
        view = leader.get_cluster()

        def versions(v: ClusterView) -> tuple[int, int]:
            member = v.member("a")
            assert member is not None and v.status is not None
            return member.version, v.status.version

        written = versions(view)
        for _ in range(3):  # 3 s: past the ttl (2 s) after which the old rule rewrote both keys
            time.sleep(1.0)
            assert leader.update_leader(LeaderStatus(lsn=7))
            leader.touch_member(_info("a"))
            assert versions(leader.get_cluster()) == written, "a key still as written was rewritten"
        # Removed behind its back: written again.
        other = _etcd(etcd_site_a, "b", scope)
        try:
            other.client.call("/kv/deleterange", {"key": b64(leader.key("members", "a"))}, time.monotonic() + 3)
            other.client.call("/kv/deleterange", {"key": b64(leader.key("status"))}, time.monotonic() + 3)
        finally:
            other.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert leader.update_leader(LeaderStatus(lsn=7))
            leader.touch_member(_info("a"))
            now = leader.get_cluster()
            if now.member("a") is not None and now.status is not None:
                break
            time.sleep(0.2)
        now = leader.get_cluster()
        assert now.member("a") is not None and now.status is not None and now.status.lsn == 7
    finally:
        leader.close()
