"""Event-driven waits on a site's DCS (real etcd): the DCS's ``revision``/``wait_for_change``, the
agent's SiteWatch (a cycle as soon as the site record or the dynamic configuration changes) and
the controller's Context.wait, which looks again on a change of the site's keys."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from site_agent.sitewatch import SiteWatch

from drctl.dcs.base import SiteRecord
from drctl.dcs.etcd import Etcd3
from drctl.dcs.factory import EtcdSettings
from drctl.lab.etcd import EtcdCluster
from drctl.sites.audit import Audit
from drctl.sites.plan import Context
from drctl.sites.state import SiteOpError
from drctl.sites.topology import Topology

NAMESPACE = "/service"


def _dcs(etcd: EtcdCluster, scope: str, name: str = "t") -> Etcd3:
    return Etcd3(
        EtcdSettings(hosts=list(etcd.endpoints)), namespace=NAMESPACE, scope=scope, name=name, ttl=10, retry_timeout=3
    )


class _ArmedEtcd3(Etcd3):
    """Records the revision each key's watch waits from: when the site watch waits from past the
    last write, every wake that write causes has been delivered (a fixed sleep only guesses)."""

    armed: dict[str, int]

    def wait_for_change(self, revision: int | None, timeout: float, key: str | None = None) -> bool:
        if key is not None and revision is not None:
            self.armed[key] = max(self.armed.get(key, 0), revision)
        return super().wait_for_change(revision, timeout, key)


def _site(dcs: Etcd3, epoch: int) -> None:
    assert dcs.replace_site(SiteRecord("active", epoch, None))


def test_a_key_watch_wakes_on_its_key_only_and_misses_no_change_made_before_the_wait(
    etcd_site_a: EtcdCluster,
) -> None:
    dcs = _dcs(etcd_site_a, f"w-{uuid.uuid4().hex[:8]}")
    try:
        rev = dcs.revision()
        assert rev is not None
        assert dcs.initialize("sysid")  # another key of the cluster
        assert dcs.wait_for_change(rev, 1.0, key="site") is False
        assert dcs.wait_for_change(rev, 5.0) is True  # the whole cluster: woken by it
        rev = dcs.revision()
        _site(dcs, 1)  # written after the revision was read, before the wait began
        assert dcs.wait_for_change(rev, 5.0, key="site") is True
        rev = dcs.revision()
        assert dcs.set_config({"ttl": 10}, None)
        assert dcs.wait_for_change(rev, 5.0, key="config") is True
        assert dcs.wait_for_change(rev, 1.0, key="site") is False
    finally:
        dcs.close()


def test_the_site_watch_requests_a_cycle_when_the_site_record_or_config_changes_not_for_other_keys(
    etcd_site_a: EtcdCluster,
) -> None:
    scope = f"w-{uuid.uuid4().hex[:8]}"
    writer = _dcs(etcd_site_a, scope, "writer")
    wakes: list[float] = []
    woken = threading.Event()

    def wake() -> None:
        wakes.append(time.monotonic())
        woken.set()

    stopping = threading.Event()
    agent = _ArmedEtcd3(
        EtcdSettings(hosts=list(etcd_site_a.endpoints)),
        namespace=NAMESPACE,
        scope=scope,
        name="agent",
        ttl=10,
        retry_timeout=3,
    )
    agent.armed = {}
    watch = SiteWatch(agent, wake, stopping, span=0.2).start()
    try:
        # The threads arm themselves in the background: write until one write after that wakes.
        for epoch in range(1, 41):
            _site(writer, epoch)
            if woken.wait(0.5):
                break
        assert woken.is_set(), "a change of the site record never woke the agent"
        # Every write of the loop has woken the agent (a later wake from one of them would be
        # blamed on the next key): both watches wait from past the last write.
        last = writer.revision()
        assert last is not None
        deadline = time.monotonic() + 60
        while agent.armed.get("site", -1) < last or "config" not in agent.armed:
            assert time.monotonic() < deadline, f"the site watch never caught up with revision {last}: {agent.armed}"
            time.sleep(0.05)
        woken.clear()
        assert writer.initialize("sysid")
        assert not woken.wait(2.5), "a key other than site/config woke the agent"
        assert writer.set_config({"ttl": 10}, None)
        assert woken.wait(10), "a change of the dynamic configuration did not wake the agent"
    finally:
        watch.stop(timeout=5.0)
        writer.close()
    assert not any(t.is_alive() for t in watch.threads)


def _topology(etcd: EtcdCluster, scope: str, tmp: Path) -> Topology:
    site = {"dcs": {"etcd": {"hosts": list(etcd.endpoints)}}, "scope": scope, "entry_point": "127.0.0.1:5000"}
    other = {**site, "scope": f"{scope}-b", "entry_point": "127.0.0.1:5001"}
    doc = {"sites": {"a": site, "b": other}, "policy": {"audit_log": str(tmp / "audit.log")}, "source": "t.yaml"}
    return Topology.model_validate(doc)


def test_a_controller_wait_looks_again_when_the_site_changes_and_times_out_with_what_to_do(
    etcd_site_a: EtcdCluster, tmp_path: Path
) -> None:
    scope = f"w-{uuid.uuid4().hex[:8]}"
    topo = _topology(etcd_site_a, scope, tmp_path)
    ctx = Context(topo, Audit(tmp_path / "audit.log", "test"))
    writer = _dcs(etcd_site_a, scope, "writer")
    looks: list[float] = []
    try:

        def promoted() -> bool:
            looks.append(time.monotonic())
            site = writer.get_cluster().site
            return site is not None and site.epoch >= 2

        _site(writer, 1)
        timer = threading.Timer(1.0, _site, args=(writer, 2))
        timer.start()
        took = ctx.wait(promoted, "the record", timeout=30, site="a")
        timer.join()
        assert 0.5 < took < 30  # it waited for the write, and saw it
        try:
            ctx.wait(lambda: False, "something that never happens", timeout=0.5, site="a")
        except SiteOpError as exc:
            assert "run the command again" in str(exc)
        else:
            raise AssertionError("a wait past its timeout must fail")
    finally:
        writer.close()
