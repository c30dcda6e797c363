"""Client routing: rendered HAProxy/PgBouncer configurations and the watcher's decisions (pure)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from drctl.dcs.base import ClusterView, Leader, Member, MemberInfo
from drctl.entrypoint import haproxy, pgbouncer
from drctl.entrypoint.members import backends, unroutable
from drctl.entrypoint.watch import Watcher, WatchTargets


def _member(name: str, conn: str, api: str, role: str = "replica") -> Member:
    return Member(name, MemberInfo(conn_url=conn, api_url=api, role=role, state="running"), version=1)


def _view(leader: str | None = "a1", *extra: Member) -> ClusterView:
    members = (
        _member("a1", "postgres://10.0.0.1:5432/postgres", "http://10.0.0.1:8008", "primary"),
        _member("a2", "postgres://[fd00::2]:5433/postgres", "https://10.0.0.12:8009"),
        *extra,
    )
    return ClusterView("demo", leader=Leader(leader, 3) if leader else None, members=members)


def test_backends_parse_ipv6_and_separate_api_hosts() -> None:
    bs = backends(_view())
    a1, a2 = bs
    assert (a1.host, a1.port, a1.leader, a1.api_https) == ("10.0.0.1", 5432, True, False)
    assert (a2.host, a2.port, a2.api_host, a2.api_port, a2.api_https) == ("fd00::2", 5433, "10.0.0.12", 8009, True)
    assert a2.address == "[fd00::2]:5433"


def test_a_member_with_an_unusable_url_is_left_out_and_named() -> None:
    view = _view("a1", _member("a3", "not a url", "http://x:1"))
    assert [b.name for b in backends(view)] == ["a1", "a2"]
    assert unroutable(view) == ["member a3: conn_url 'not a url' has no host"]


def test_haproxy_config_checks_the_agents_and_exposes_the_runtime_api(tmp_path: Path) -> None:
    opts = haproxy.HaproxyOptions("a", "127.0.0.1:5000", "127.0.0.1:5001", str(tmp_path / "admin.sock"))
    text = haproxy.render(backends(_view()), opts)
    assert "listen a_rw" in text and "option httpchk OPTIONS /primary" in text
    assert "listen a_ro" in text and "option httpchk OPTIONS /replica" in text
    assert "server a1 10.0.0.1:5432 check port 8008" in text
    # the agent of a2 listens elsewhere than its PostgreSQL, over https
    assert "server a2 [fd00::2]:5433 check addr 10.0.0.12 port 8009 check-ssl verify none" in text
    assert f"stats socket {tmp_path / 'admin.sock'} mode 600 level admin" in text
    assert "on-marked-down shutdown-sessions" in text
    if shutil.which("haproxy"):
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(text)
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_switch_commands_raise_the_new_leader_and_cut_the_others() -> None:
    opts = haproxy.HaproxyOptions("a")
    assert haproxy.switch_commands(backends(_view("a2")), opts) == [
        "enable health a_rw/a1",
        "set server a_rw/a1 health down",
        "shutdown sessions server a_rw/a1",
        "disable health a_rw/a2",
        "set server a_rw/a2 health up",
    ]


def test_pgbouncer_points_each_database_at_the_leader_and_reads_at_a_replica() -> None:
    opts = pgbouncer.PgbouncerOptions("a", ("app", "postgres"))
    text = pgbouncer.render(backends(_view()), opts)
    assert "app = host=10.0.0.1 port=5432 dbname=app" in text
    assert "app_ro = host=fd00::2 port=5433 dbname=app" in text
    assert "server_fast_close = 1" in text
    no_leader = pgbouncer.render(backends(_view(None)), opts)
    assert "app = host" not in no_leader and "no leader in site a" in no_leader


def test_watcher_announces_a_new_leader_only_once_it_answers_primary() -> None:
    answers = {"a1": False}
    said: list[str] = []
    w = Watcher(None, WatchTargets(), say=said.append, primary_probe=lambda b: answers[b.name], promote_wait=0.2)  # type: ignore[arg-type]
    assert not w.sync(_view("a1"))  # holds the key, not yet promoted: health checks stay in charge
    answers["a1"] = True
    assert w.sync(_view("a1"))
    assert not w.sync(_view("a1"))  # nothing changed: nothing pushed
    assert said[-1] == "entry points now route writes to a1"


def test_watcher_without_leader_routes_writes_nowhere() -> None:
    said: list[str] = []
    w = Watcher(None, WatchTargets(), say=said.append)  # type: ignore[arg-type]
    assert w.sync(_view(None))
    assert said == ["entry points now route writes to nobody (no leader)"]
