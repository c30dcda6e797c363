"""The DCS contract (drctl/dcs/base.py) against real servers, one suite for every backend.

etcd always runs (a real 3-member cluster from the lab harness); Consul runs only when a ``consul``
binary is on PATH (a dev agent started through the Supervisor), otherwise its cases are skipped.
Tests that break the DCS (kill or SIGSTOP members) need a multi-member cluster and are etcd-only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drctl.dcs.base import (
    DCS,
    DCSError,
    Failover,
    HistoryEntry,
    LeaderStatus,
    MemberInfo,
    SiteRecord,
)
from drctl.dcs.consul import session_ttl
from drctl.dcs.etcd import Etcd3
from drctl.dcs.etcd_client import EtcdClient
from drctl.dcs.factory import DcsSettings, EtcdSettings, get_dcs
from drctl.lab.etcd import EtcdCluster, EtcdTls
from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor
from drctl.lab.tls import LabCA

pytestmark = pytest.mark.integration

NAMESPACE = "/pgdr-test"
HAVE_CONSUL = shutil.which("consul") is not None
CONSUL = pytest.param("consul", marks=pytest.mark.skipif(not HAVE_CONSUL, reason="consul binary not on PATH"))
# etcd with TLS (client certificates required) and authentication, as a least-privilege user
# that may read and write its namespace only (issue 14).
BACKENDS = ["etcd", "etcd-tls-auth", CONSUL]
SECURE_USER = ("pgdr-contract", "contract-pw")


def _scope() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------
# Backends


@dataclass
class Backend:
    kind: str
    settings: DcsSettings
    short_ttl: int  # the smallest ttl the backend honours
    kill_session: Callable[[str], None]  # invalidate a lease/session behind its owner's back
    created: list[DCS] = field(default_factory=list)

    def make(self, name: str, scope: str, *, ttl: int | None = None, retry_timeout: float = 2.0) -> DCS:
        dcs = get_dcs(
            self.settings,
            namespace=NAMESPACE,
            scope=scope,
            name=name,
            ttl=ttl or self.short_ttl,
            retry_timeout=retry_timeout,
        )
        self.created.append(dcs)
        return dcs

    def expiry_bound(self, ttl: int) -> float:
        """How long after its last renewal a lease-bound key may survive."""
        if self.kind == "consul":
            return 2 * session_ttl(ttl) + 2.0
        # etcd's lessor checks expiries every 500 ms and revokes through raft.
        return ttl + 2.0

    def cleanup(self) -> None:
        for dcs in self.created:
            with contextlib.suppress(DCSError):
                dcs.revoke_session()
            dcs.close()
        self.created.clear()


@pytest.fixture(scope="session")
def consul_agent(session_supervisor: Supervisor, lab_root: Path) -> Iterator[str]:
    """A Consul dev agent on free ports; yields its HTTP address."""
    port = free_port()
    argv = [
        "consul", "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
        "-http-port", str(port), "-dns-port", "-1", "-grpc-port", "-1",
        "-server-port", str(free_port()), "-serf-lan-port", str(free_port()),
        "-serf-wan-port", str(free_port()),
    ]  # fmt: skip
    name = "consul-dev"
    session_supervisor.spawn(name, argv, role="consul", log=lab_root / "consul.log", port=port)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/status/leader", timeout=1) as resp:
                if json.loads(resp.read() or b'""'):
                    break
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            session_supervisor.stop(name, grace=5)
            pytest.fail(f"consul dev agent not ready after 30 s: see {lab_root / 'consul.log'}")
        time.sleep(0.2)
    yield url
    session_supervisor.stop(name, grace=10)


@dataclass
class SecureEtcd:
    cluster: EtcdCluster
    tls: EtcdTls

    def settings(self, **override: Any) -> DcsSettings:
        doc: dict[str, Any] = {
            "hosts": self.cluster.endpoints,
            "username": SECURE_USER[0],
            "password": SECURE_USER[1],
            "cacert": str(self.tls.ca),
            "cert": str(self.tls.client_cert),
            "key": str(self.tls.client_key),
        }
        doc.update(override)
        return DcsSettings.model_validate({"etcd": {k: v for k, v in doc.items() if v is not None}})


@pytest.fixture(scope="session")
def etcd_secure(session_supervisor: Supervisor, lab_root: Path) -> Iterator[SecureEtcd]:
    """A 3-member etcd serving TLS only, client certificates required (client and peer ports),
    authentication on, and a user whose role grants read-write on NAMESPACE/ only."""
    d = lab_root / "etcd-secure"
    ca = LabCA.create(d / "ca")
    member = ca.issue(d / "ca", "etcd")
    client = ca.issue(d / "ca", "client", common_name=False)
    tls = EtcdTls(ca.cert, member.cert, member.key, client.cert, client.key)
    cluster = EtcdCluster(session_supervisor, d, name="sec-etcd", size=3, tls=tls).start()
    try:
        cluster.enable_auth("contract-root-pw")
        cluster.add_prefix_user(*SECURE_USER, f"{NAMESPACE}/")
        yield SecureEtcd(cluster, tls)
    finally:
        cluster.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "etcd-tls-auth":
        sec: SecureEtcd = request.getfixturevalue("etcd_secure")
        settings = sec.settings()
        assert settings.etcd is not None

        def revoke_secure(lease: str) -> None:
            e = settings.etcd
            assert e is not None
            client = EtcdClient(e, retry_timeout=2.0)
            client.call("/lease/revoke", {"ID": lease}, time.monotonic() + 2.0)
            client.close()

        b = Backend("etcd", settings, 3, revoke_secure)
    elif request.param == "etcd":
        cluster: EtcdCluster = request.getfixturevalue("etcd_site_a")
        hosts = cluster.endpoints

        def revoke_lease(lease: str) -> None:
            client = EtcdClient(EtcdSettings(hosts=hosts), retry_timeout=2.0)
            client.call("/lease/revoke", {"ID": lease}, time.monotonic() + 2.0)
            client.close()

        b = Backend("etcd", DcsSettings.model_validate({"etcd": {"hosts": hosts}}), 3, revoke_lease)
    else:
        import consul

        url: str = request.getfixturevalue("consul_agent")
        port = int(url.rsplit(":", 1)[1])

        def destroy_session(sid: str) -> None:
            consul.Consul(host="127.0.0.1", port=port).session.destroy(sid)

        settings = DcsSettings.model_validate({"consul": {"host": "127.0.0.1", "port": port}})
        b = Backend("consul", settings, 20, destroy_session)
    yield b
    b.cleanup()


def _info(name: str, **kw: Any) -> MemberInfo:
    return MemberInfo(conn_url=f"postgres://{name}:5432/postgres", api_url=f"http://{name}:8008", **kw)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result: Any = fn()
    except DCSError as exc:
        result = exc
    return result, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Leader election


def test_ten_contenders_exactly_one_wins_20_times(backend: Backend) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        for _round in range(20):
            scope = _scope()
            contenders = [backend.make(f"c{i}", scope) for i in range(10)]
            barrier = threading.Barrier(10)

            def contend(dcs: DCS, barrier: threading.Barrier = barrier) -> bool:
                dcs.touch_member(_info(dcs.name))  # each takes its own lease first
                barrier.wait(timeout=10)
                return dcs.attempt_to_acquire_leader()

            results = list(pool.map(contend, contenders))
            winners = [c.name for c, won in zip(contenders, results, strict=True) if won]
            assert len(winners) == 1, f"round {_round}: winners {winners}"
            view = contenders[0].get_cluster()
            assert view.leader is not None and view.leader.name == winners[0]
            assert len(view.members) == 10
            # The loser's renewals say "not leader"; the winner's say "leader".
            for c, won in zip(contenders, results, strict=True):
                if won or c.name == "c0" or c.name == "c1":
                    assert c.update_leader() is won
            list(pool.map(lambda c: c.revoke_session(), contenders))
            assert contenders[0].get_cluster().leader is None
            for c in contenders:
                c.close()
            backend.created.clear()


def test_holder_that_stops_renewing_loses_key_one_that_renews_keeps_it(backend: Backend) -> None:
    ttl = backend.short_ttl
    quiet, busy = backend.make("quiet", _scope(), ttl=ttl), backend.make("busy", _scope(), ttl=ttl)
    observer = backend.make("observer", quiet.scope)
    for dcs in (quiet, busy):
        dcs.touch_member(_info(dcs.name))
        assert dcs.attempt_to_acquire_leader()
    last_renewal = time.monotonic()
    assert quiet.update_leader()
    last_renewal = time.monotonic()

    gone_at: list[float] = []

    def poll() -> None:
        deadline = last_renewal + backend.expiry_bound(ttl) + 3
        while time.monotonic() < deadline:
            view = observer.get_cluster()
            if view.leader is None:
                assert view.member("quiet") is None  # the member key went with the lease
                gone_at.append(time.monotonic())
                return
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    # Meanwhile "busy" renews every second (its loop_wait) for three ttls and more.
    renew_until = time.monotonic() + max(3 * ttl, backend.expiry_bound(ttl) + 1)
    while time.monotonic() < renew_until:
        assert busy.update_leader(LeaderStatus(lsn=100))
        busy.touch_member(_info("busy"))
        time.sleep(1.0)
    poller.join()
    assert gone_at, "the key of a holder that stopped renewing never disappeared"
    lived = gone_at[0] - last_renewal
    assert ttl * 0.9 <= lived <= backend.expiry_bound(ttl), f"leader key lived {lived:.2f}s (ttl {ttl})"
    view = busy.get_cluster()
    assert view.leader is not None and view.leader.name == "busy"
    assert view.member("busy") is not None
    assert view.status is not None and view.status.lsn == 100


def test_release_only_if_ours(backend: Backend) -> None:
    scope = _scope()
    a, b = backend.make("a", scope), backend.make("b", scope)
    a.touch_member(_info("a"))
    b.touch_member(_info("b"))
    assert a.attempt_to_acquire_leader()
    assert not b.attempt_to_acquire_leader()
    assert not b.delete_leader(last_lsn=1)
    view = b.get_cluster()
    assert view.leader is not None and view.leader.name == "a"
    assert a.update_leader(LeaderStatus(lsn=50, slots={"b": 40}))
    assert a.delete_leader(last_lsn=123)
    view = b.get_cluster()
    assert view.leader is None
    assert view.status is not None and view.status.lsn == 123 and dict(view.status.slots) == {"b": 40}
    assert not a.update_leader()  # released: not leader any more
    assert not a.delete_leader()
    assert b.attempt_to_acquire_leader()
    assert b.get_cluster().leader.name == "b"  # type: ignore[union-attr]


def test_lost_lease_means_lost_leadership_and_member_is_rebound(backend: Backend) -> None:
    scope = _scope()
    a = backend.make("a", scope)
    a.touch_member(_info("a"))
    assert a.attempt_to_acquire_leader()
    old = a.get_cluster()
    assert old.leader is not None and old.leader.session
    backend.kill_session(old.leader.session)  # the lease vanishes behind a's back
    assert not a.update_leader()
    view = a.get_cluster()
    assert view.leader is None
    member = view.member("a")
    assert member is not None and member.session and member.session != old.leader.session
    assert not a.update_leader()  # the new lease does not make the old key ours
    assert a.attempt_to_acquire_leader()
    assert a.update_leader()
    view = a.get_cluster()
    assert view.leader is not None and view.leader.session == member.session


# ---------------------------------------------------------------------------------------------
# Keys


def test_cas_refuses_stale_versions(backend: Backend) -> None:
    scope = _scope()
    d = backend.make("a", scope)

    def version(attr: str) -> int:
        rec = getattr(d.get_cluster(), attr)
        assert rec is not None
        return int(rec.version)

    # config
    assert d.set_config({"ttl": 30}, None)
    assert not d.set_config({"ttl": 1}, None)  # create-only: exists already
    v1 = version("config")
    assert d.set_config({"ttl": 31}, v1)
    assert not d.set_config({"ttl": 99}, v1)  # stale
    assert dict(d.get_cluster().config_data) == {"ttl": 31}
    # history
    e1 = HistoryEntry(1, 100, "failover", "2024-01-01T00:00:00+00:00", "a")
    e2 = HistoryEntry(2, 200, "switchover", "2024-01-02T00:00:00+00:00", "b")
    assert d.set_history([e1], None)
    hv = version("history")
    assert d.set_history([e1, e2], hv)
    assert not d.set_history([e2], hv)
    assert d.get_cluster().history.entries == (e1, e2)  # type: ignore[union-attr]
    # failover
    assert d.set_failover(Failover("a", "b", None), None)
    fv = version("failover")
    assert d.set_failover(Failover(None, "c", "2030-01-01T00:00:00+00:00"), fv)
    assert not d.set_failover(Failover("x", "y", None), fv)
    fo = d.get_cluster().failover
    assert fo is not None and (fo.leader, fo.candidate) == (None, "c")
    assert not d.delete_failover(fv)  # stale
    assert d.get_cluster().failover is not None
    assert d.delete_failover(version("failover"))
    assert d.get_cluster().failover is None
    # sync
    assert d.set_sync("a", ["b"], None)
    sv = version("sync")
    assert d.set_sync("a", ["b", "c"], sv)
    assert not d.set_sync("z", [], sv)
    sync = d.get_cluster().sync
    assert sync is not None and sync.leader == "a" and sync.sync_standbys == ("b", "c")
    assert not d.delete_sync(sv)
    assert d.delete_sync(version("sync"))
    assert d.get_cluster().sync is None
    # site
    assert d.set_site(SiteRecord("active", 1, None), None)
    stv = version("site")
    assert d.set_site(SiteRecord("standby", 2, "site-b"), stv)
    assert not d.set_site(SiteRecord("active", 9, None), stv)
    site = d.get_cluster().site
    assert site is not None and (site.role, site.epoch, site.follows) == ("standby", 2, "site-b")
    assert d.replace_site(SiteRecord("active", 3, None))  # over whatever version is there now
    site = d.get_cluster().site
    assert site is not None and (site.role, site.epoch, site.version) == ("active", 3, version("site"))
    assert site.version != stv
    # fences are create-only
    assert d.write_fence("epoch-2", {"by": "a"})
    assert not d.write_fence("epoch-2", {"by": "b"})
    fences = d.get_cluster().fences
    assert len(fences) == 1 and dict(fences[0].data) == {"by": "a"}
    # failsafe: only the leader may write it
    assert not d.set_failsafe({"a": "http://a:8008"})
    d.touch_member(_info("a"))
    assert d.attempt_to_acquire_leader()
    assert d.set_failsafe({"a": "http://a:8008", "b": "http://b:8008"})
    assert dict(d.get_cluster().failsafe or {}) == {"a": "http://a:8008", "b": "http://b:8008"}


def _running_member(addr: str, **kw: Any) -> MemberInfo:
    """A running member on timeline 3 at ``addr``; ``kw``: the other fields."""
    return MemberInfo(
        conn_url=f"postgres://{addr}:5432/postgres",
        api_url=f"http://{addr}:8008",
        state="running",
        timeline=3,
        version="0.1.0",
        **kw,
    )


def test_touch_member_and_get_cluster_round_trip_every_field(backend: Backend) -> None:
    scope = _scope()
    a, b = backend.make("a", scope), backend.make("b", scope)
    info_a = _running_member(
        "10.0.0.1",
        role="primary",
        received_lsn=None,
        replayed_lsn=None,
        tags={"nofailover": False, "clonefrom": True},
        extra={"xlog_location": 1234, "pending_restart": True},
    )
    info_b = _running_member("10.0.0.2", role="replica", received_lsn=5000, replayed_lsn=4990, tags={"nosync": True})
    a.touch_member(info_a)
    b.touch_member(info_b)
    assert a.initialize()
    init_v = a.get_cluster().initialize_version
    assert a.initialize("7300000000000000001", create_new=False, version=init_v)
    assert a.attempt_to_acquire_leader()
    assert a.update_leader(LeaderStatus(lsn=6000, slots={"b": 5000}))
    assert a.set_config({"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"max_connections": 100}}}, None)
    hist = [HistoryEntry(1, 4096, "no recovery target specified", "2024-05-01T10:00:00+00:00", "a")]
    assert a.set_history(hist, None)
    assert a.set_failover(Failover("a", "b", "2030-01-01T00:00:00+00:00"), None)
    assert a.set_sync("a", ["b"], None)
    assert a.set_failsafe({"a": "http://10.0.0.1:8008", "b": "http://10.0.0.2:8008"})
    assert a.set_site(SiteRecord("active", 4, None, extra={"name": "site-a"}), None)
    assert a.write_fence("0004", {"epoch": 4, "site": "site-b"})

    view = b.get_cluster()
    assert view.scope == scope
    assert view.revision > 0
    assert [m.name for m in view.members] == ["a", "b"]
    ma, mb = view.member("a"), view.member("b")
    assert ma is not None and mb is not None
    assert ma.info == info_a and mb.info == info_b
    assert ma.session and mb.session and ma.session != mb.session
    assert view.leader is not None and view.leader.name == "a" and view.leader.session == ma.session
    assert view.leader_member == ma
    assert view.initialize == "7300000000000000001"
    assert dict(view.config_data)["postgresql"] == {"parameters": {"max_connections": 100}}
    assert view.history is not None and list(view.history.entries) == hist and view.timeline == 2
    assert view.failover == Failover("a", "b", "2030-01-01T00:00:00+00:00", view.failover.version)  # type: ignore[union-attr]
    assert view.sync is not None and view.sync.sync_standbys == ("b",)
    assert view.status is not None and view.status.lsn == 6000 and dict(view.status.slots) == {"b": 5000}
    assert dict(view.failsafe or {}) == {"a": "http://10.0.0.1:8008", "b": "http://10.0.0.2:8008"}
    assert view.site is not None and view.site.epoch == 4 and dict(view.site.extra) == {"name": "site-a"}
    assert [dict(f.data) for f in view.fences] == [{"epoch": 4, "site": "site-b"}]

    # A changed record is rewritten; delete_member and revoke_session remove keys at once.
    a.touch_member(MemberInfo(api_url="http://10.0.0.1:8008", role="demoted"))
    assert b.get_cluster().member("a").info.role == "demoted"  # type: ignore[union-attr]
    b.delete_member()
    assert b.get_cluster().member("b") is None
    a.revoke_session()
    view = b.get_cluster()
    assert view.leader is None and view.member("a") is None
    assert view.config is not None and view.status is not None  # not bound to a lease


def test_initialize_race_and_delete_cluster(backend: Backend) -> None:
    scope = _scope()
    nodes = [backend.make(f"n{i}", scope) for i in range(5)]
    barrier = threading.Barrier(len(nodes))

    def race(d: DCS) -> bool:
        barrier.wait(timeout=10)
        return d.initialize()

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        results = list(pool.map(race, nodes))
    assert sum(results) == 1
    winner = nodes[results.index(True)]
    view = winner.get_cluster()
    assert view.initialize == ""
    assert not winner.initialize("123", create_new=False, version=view.initialize_version + 1000)
    assert winner.initialize("123", create_new=False, version=view.initialize_version)
    assert winner.get_cluster().initialize == "123"
    assert winner.cancel_initialization()
    assert winner.get_cluster().initialize is None
    assert nodes[0].initialize()  # another may try again

    # delete_cluster removes every key of this cluster and nothing else
    other = backend.make("x", _scope())
    assert other.set_config({"keep": True}, None)
    for d in nodes[:2]:
        d.touch_member(_info(d.name))
    assert nodes[0].attempt_to_acquire_leader()
    assert nodes[0].set_config({"a": 1}, None)
    assert nodes[0].delete_cluster()
    view = nodes[1].get_cluster()
    assert view.leader is None and view.members == () and view.config is None and view.initialize is None
    assert dict(other.get_cluster().config_data) == {"keep": True}


# ---------------------------------------------------------------------------------------------
# Watch


def _watch_in_thread(dcs: DCS, version: int | None, timeout: float) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        out.append(dcs.watch(version, timeout))
        out.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_watch_wakes_on_leader_delete_and_expiry(backend: Backend) -> None:
    scope = _scope()
    ttl = backend.short_ttl
    holder, watcher = backend.make("holder", scope, ttl=ttl), backend.make("watcher", scope)
    holder.touch_member(_info("holder"))
    assert holder.attempt_to_acquire_leader()
    version = holder.get_cluster().leader.version  # type: ignore[union-attr]

    # A stale version returns at once; no change returns False after the timeout.
    result, took = _timed(lambda: watcher.watch(version + 1000, 5.0))
    assert result is True and took < 0.5
    result, took = _timed(lambda: watcher.watch(version, 0.7))
    assert result is False and 0.6 <= took <= 1.5

    # Deleted: the watcher wakes within 1 s.
    thread, out = _watch_in_thread(watcher, version, 10.0)
    time.sleep(0.5)
    assert holder.delete_leader()
    deleted_at = time.monotonic()
    thread.join(12)
    assert out and out[0] is True, "watch did not report the deletion"
    assert out[1] - deleted_at < 1.0, f"woke {out[1] - deleted_at:.2f}s after the delete"

    # Expired: the holder stops renewing; the watcher wakes within 1 s of the key disappearing.
    assert holder.attempt_to_acquire_leader()
    assert holder.update_leader()
    version = watcher.get_cluster().leader.version  # type: ignore[union-attr]
    renewed_at = time.monotonic()
    thread, out = _watch_in_thread(watcher, version, backend.expiry_bound(ttl) + 5)
    observer = backend.make("observer", scope)
    last_poll_with_key = time.monotonic()
    gone_seen = None
    while time.monotonic() < renewed_at + backend.expiry_bound(ttl) + 4:
        poll_started = time.monotonic()
        if observer.get_cluster().leader is None:
            gone_seen = time.monotonic()
            break
        last_poll_with_key = poll_started
        time.sleep(0.05)
    thread.join(backend.expiry_bound(ttl) + 8)
    assert gone_seen is not None, "the leader key never expired"
    assert out and out[0] is True
    woke_at = out[1]
    # The key vanished after last_poll_with_key started; the watcher must not wake before that
    # (nothing else changed) and must wake within 1 s after it.
    assert woke_at >= last_poll_with_key - 0.05, "watch woke before the key expired"
    assert woke_at - last_poll_with_key < 1.0, f"woke {woke_at - last_poll_with_key:.2f}s after the expiry"


# ---------------------------------------------------------------------------------------------
# Faults (etcd: needs a multi-member DCS)


def _etcd(hosts: list[str], name: str, scope: str, *, ttl: int = 6, retry_timeout: float = 2.0) -> Etcd3:
    return Etcd3(
        EtcdSettings(hosts=hosts), namespace=NAMESPACE, scope=scope, name=name, ttl=ttl, retry_timeout=retry_timeout
    )


def _assert_all_fail_within(dcs: Etcd3, other: Etcd3, bound: float) -> None:
    """``dcs`` holds a lease (so update/delete_leader must ask the DCS); ``other`` is fresh."""
    assert dcs.lease is not None and other.lease is None
    ops: dict[str, Callable[[], Any]] = {
        "get_cluster": dcs.get_cluster,
        "attempt_to_acquire_leader": other.attempt_to_acquire_leader,
        "update_leader": dcs.update_leader,
        "touch_member": lambda: dcs.touch_member(_info(dcs.name, state="x")),
        "set_config": lambda: dcs.set_config({"x": 1}, 1),
        "delete_leader": dcs.delete_leader,
        "initialize": dcs.initialize,
        "delete_failover": dcs.delete_failover,
    }
    for what, op in ops.items():
        result, took = _timed(op)
        assert isinstance(result, DCSError), f"{what} returned {result!r} without quorum"
        assert took <= dcs.retry_timeout + bound, f"{what} took {took:.2f}s (retry_timeout {dcs.retry_timeout})"
        assert result.endpoints, f"{what}: DCSError names no endpoint"
    result, took = _timed(lambda: dcs.watch(None, 1.0))
    assert result is False and took <= 1.0 + bound


def test_unreachable_dcs_names_the_hosts() -> None:
    hosts = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    settings = DcsSettings.model_validate({"etcd": {"hosts": hosts}})
    dcs = get_dcs(settings, namespace=NAMESPACE, scope="x", name="a", ttl=10, retry_timeout=1.0)
    result, took = _timed(dcs.get_cluster)
    assert isinstance(result, DCSError)
    assert took <= 1.5
    assert result.endpoints == tuple(f"http://{h}" for h in hosts)
    assert all(h in str(result) for h in hosts)


def test_etcd_member_down_then_quorum_lost(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.kill_member(0)  # the killed member comes FIRST in the endpoint list
    etcd_cluster.wait_healthy(60, members=etcd_cluster.members[1:])  # a harness bound: generous under load
    hosts = etcd_cluster.endpoints
    scope = _scope()
    a, b = _etcd(hosts, "a", scope), _etcd(hosts, "b", scope)

    a.touch_member(_info("a"))
    b.touch_member(_info("b"))
    assert a.attempt_to_acquire_leader()
    assert not b.attempt_to_acquire_leader()
    assert a.update_leader(LeaderStatus(lsn=10))
    assert a.set_config({"ttl": 6}, None)
    view = b.get_cluster()
    assert view.leader.name == "a" and len(view.members) == 2  # type: ignore[union-attr]
    assert not b.set_config({"ttl": 1}, view.config.version + 1)  # type: ignore[union-attr]
    assert b.set_config({"ttl": 7}, view.config.version)  # type: ignore[union-attr]
    assert b.watch(view.leader.version + 1, 1.0)  # type: ignore[union-attr]
    thread, out = _watch_in_thread(b, view.leader.version, 5.0)  # type: ignore[union-attr]
    time.sleep(0.3)
    assert a.delete_leader(last_lsn=20)
    thread.join(6)
    assert out and out[0] is True
    assert b.attempt_to_acquire_leader()
    assert b.initialize()
    # Took the live endpoints, and the failover did not eat the budget.
    _, took = _timed(b.get_cluster)
    assert took < 0.5

    # Quorum lost: every operation fails with DCSError within retry_timeout.
    etcd_cluster.kill_member(1)
    b.set_retry_timeout(1.5)
    _assert_all_fail_within(b, _etcd(hosts, "c", scope, retry_timeout=1.5), bound=0.5)


def _raft_leader_index(cluster: EtcdCluster) -> int:
    for i, url in enumerate(cluster.endpoints):
        req = urllib.request.Request(f"{url}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=2) as resp:
            doc = json.loads(resp.read())
        if doc.get("leader") == doc["header"]["member_id"]:
            return i
    raise AssertionError("no etcd member reports itself leader")


def test_etcd_isolated_member_is_not_trusted_and_paused_cluster_fails_fast(etcd_cluster: EtcdCluster) -> None:
    hosts = etcd_cluster.endpoints
    scope = _scope()
    ttl = 3
    # The worst case: the member cut off from its peers is the raft leader (it keeps believing it
    # leads until CheckQuorum deposes it) and the DCS leader's client talks only to it.
    isolated = _raft_leader_index(etcd_cluster)
    peers = [i for i in range(3) if i != isolated]
    leader = _etcd([hosts[isolated]], "a", scope, ttl=ttl, retry_timeout=1.0)
    leader.touch_member(_info("a"))
    observer = _etcd(hosts, "o", scope, retry_timeout=1.5)
    observer.touch_member(_info("o"))
    assert leader.attempt_to_acquire_leader()
    assert leader.update_leader()
    last_renewal = time.monotonic()

    for i in peers:
        etcd_cluster.pause_member(i)
    try:
        outcomes: list[Any] = []
        while time.monotonic() < last_renewal + ttl + 2.5:
            result, took = _timed(leader.update_leader)
            outcomes.append(result)
            assert result is not True, "update_leader trusted an isolated member"
            assert took <= leader.retry_timeout + 0.5
            time.sleep(0.2)
        assert outcomes and all(r is False or isinstance(r, DCSError) for r in outcomes)
        result, took = _timed(leader.get_cluster)
        assert isinstance(result, DCSError), "an isolated member answered a linearizable read"

        # All three stopped: every call fails within retry_timeout.
        etcd_cluster.pause_member(isolated)
        _assert_all_fail_within(observer, _etcd(hosts, "p", scope, retry_timeout=1.5), bound=0.5)
    finally:
        etcd_cluster.resume_all()

    # Back to normal: the same objects work again (no state poisoned by the outage), once the
    # resumed cluster has elected a raft leader (slow on a loaded machine).
    observer.set_retry_timeout(5.0)
    deadline = time.monotonic() + 60
    while True:
        try:
            view = observer.get_cluster()
            break
        except DCSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert view.member("o") is not None or view.member("a") is not None or view.revision > 0


# ---------------------------------------------------------------------------------------------
# Leases and ttl changes (invariant 7): the deadline follows the lease actually granted


def _lease_ttl(hosts: list[str], lease: str) -> tuple[int, int]:
    """(granted TTL, remaining TTL) of a lease, as etcd reports them."""
    client = EtcdClient(EtcdSettings(hosts=hosts), retry_timeout=2.0)
    try:
        doc = client.call("/lease/timetolive", {"ID": lease}, time.monotonic() + 2.0)
    finally:
        client.close()
    return int(doc.get("grantedTTL", 0)), int(doc.get("TTL", -1))


@pytest.mark.parametrize(("old", "new"), [(4, 12), (12, 4)])
def test_etcd_ttl_change_regrants_the_leader_lease_safely(etcd_site_a: EtcdCluster, old: int, new: int) -> None:
    hosts = etcd_site_a.endpoints
    scope = _scope()
    settings = DcsSettings.model_validate({"etcd": {"hosts": hosts}})
    dcs = get_dcs(settings, namespace=NAMESPACE, scope=scope, name="a", ttl=old, retry_timeout=2.0)
    other = get_dcs(settings, namespace=NAMESPACE, scope=scope, name="b", ttl=old, retry_timeout=2.0)
    try:
        dcs.touch_member(_info("a"))
        assert dcs.attempt_to_acquire_leader()
        assert dcs.granted_ttl == old
        first = dcs.session_id
        dcs.set_ttl(new)  # the dynamic configuration changed
        # The key stays on the lease granted with the old ttl until the leader moves it: the
        # deadline must not switch to the new ttl before that.
        assert dcs.granted_ttl == old
        assert dcs.update_leader(LeaderStatus(10))
        moved = dcs.session_id
        assert moved != first
        # until the next plain renewal, the shorter of both TTLs counts
        assert dcs.granted_ttl == min(old, new)
        view = other.get_cluster()
        assert view.leader is not None and view.leader.name == "a" and view.leader.session == moved
        assert view.member("a") is not None and view.member("a").session == moved  # type: ignore[union-attr]
        assert _lease_ttl(hosts, moved)[0] == new
        assert _lease_ttl(hosts, first)[1] == -1  # type: ignore[arg-type]  # the old lease is revoked
        assert dcs.update_leader(LeaderStatus(11))
        assert dcs.granted_ttl == new
        assert not other.attempt_to_acquire_leader()
    finally:
        for d in (dcs, other):
            with contextlib.suppress(DCSError):
                d.revoke_session()
            d.close()


def test_etcd_leader_key_with_a_foreign_value_on_my_lease_is_repaired(etcd_site_a: EtcdCluster) -> None:
    hosts = etcd_site_a.endpoints
    scope = _scope()
    settings = DcsSettings.model_validate({"etcd": {"hosts": hosts}})
    dcs = get_dcs(settings, namespace=NAMESPACE, scope=scope, name="a", ttl=10, retry_timeout=2.0)
    try:
        assert dcs.attempt_to_acquire_leader()
        lease = dcs.session_id
        client = EtcdClient(EtcdSettings(hosts=hosts), retry_timeout=2.0)
        from drctl.dcs.etcd_wire import b64

        key = f"{NAMESPACE}/{scope}/leader"
        client.call(
            "/kv/put", {"key": b64(key), "value": b64(b"\xff\xfegarbage"), "lease": lease}, time.monotonic() + 2
        )
        client.close()
        view = dcs.get_cluster()
        assert view.leader is None and view.corrupt_key("leader") is not None
        assert view.corrupt_key("leader").session == lease  # type: ignore[union-attr]
        assert dcs.update_leader()  # bound to my lease: still mine, and the value is rewritten
        view = dcs.get_cluster()
        assert view.leader is not None and view.leader.name == "a" and view.corrupt == ()
    finally:
        with contextlib.suppress(DCSError):
            dcs.revoke_session()
        dcs.close()


# etcd security: least privilege, client certificates, credentials


def test_etcd_least_privilege_user_is_confined_to_its_namespace(etcd_secure: SecureEtcd) -> None:
    settings = etcd_secure.settings()
    outside = get_dcs(settings, namespace="/service", scope=_scope(), name="n1", ttl=5, retry_timeout=2.0)
    try:
        with pytest.raises(DCSError, match="permission denied"):
            outside.touch_member(_info("n1"))
        with pytest.raises(DCSError, match="permission denied"):
            outside.get_cluster()
    finally:
        outside.close()
    inside = get_dcs(settings, namespace=NAMESPACE, scope=_scope(), name="n1", ttl=5, retry_timeout=2.0)
    try:
        inside.touch_member(_info("n1"))
        assert inside.attempt_to_acquire_leader()
        inside.revoke_session()
    finally:
        inside.close()


@pytest.mark.parametrize(
    "override,fragment",
    [
        ({"password": "wrong"}, "authentication as 'pgdr-contract' failed"),
        ({"cert": None, "key": None}, "certificate"),
        ({"cacert": None}, "certificate verify failed"),
    ],
)
def test_etcd_wrong_credentials_or_certificates_are_refused(
    etcd_secure: SecureEtcd, override: dict[str, Any], fragment: str
) -> None:
    # The client retries until its deadline, so its last attempts get only what is left of it and,
    # on a loaded machine, time out in the TLS handshake. The error must still be the refusal an
    # attempt given its full time saw (EtcdClient.call keeps that one), which is what this test is
    # about; retry_timeout leaves each full attempt (4 s / 3 endpoints) time for a slow handshake.
    dcs = get_dcs(
        etcd_secure.settings(**override), namespace=NAMESPACE, scope=_scope(), name="n", ttl=10, retry_timeout=4.0
    )
    try:
        with pytest.raises(DCSError) as exc:
            dcs.get_cluster()
        assert fragment in str(exc.value)
    finally:
        dcs.close()
