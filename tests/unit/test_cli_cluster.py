"""The `drctl` cluster verbs (drctl.cli.cluster_cmd): pure row/topology/diff/config functions, and
the commands through click's CliRunner with the two I/O boundaries substituted: a ``FakeStore``
(the DCS) and ``FakeAgents`` (the agents' REST API), given as ``Runtime`` in ``ctx.obj``.

A few tests use real sockets: an unreachable DCS (a closed local port) and the urllib3 agent client
against the real site-agent REST server (site_agent.api) with Basic auth.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from site_agent.api import start_api
from site_agent.snapshot import NodeSnapshot

from drctl.agentapi.client import AgentApi
from drctl.cli import cluster_cmd as cc
from drctl.cli import cluster_session as cs
from drctl.cli import cluster_view as cv
from drctl.cli import config_edit as ce
from drctl.cli.agent_client import AgentClient, AgentReply, AgentUnreachable, RestAuth
from drctl.cli.context import CliError, Runtime, Target, load_target_file, parse_dcs_url, resolve_base
from drctl.cli.main import cli
from drctl.common.members import member_role
from drctl.dcs.base import (
    ClusterView,
    Failover,
    History,
    HistoryEntry,
    Leader,
    LeaderStatus,
    Member,
    Record,
    SyncState,
)
from tests.builders import MIB, agent_yaml, member

BASE_CONFIG = {
    "ttl": 30,
    "loop_wait": 10,
    "retry_timeout": 10,
    "maximum_lag_on_failover": 1048576,
    "postgresql": {"parameters": {"max_connections": 100}, "use_pg_rewind": True},
}


# ---------------------------------------------------------------------------------------------
# Builders and fakes


def make_view(
    *,
    leader: str | None = "n1",
    config: Mapping[str, Any] | None = None,
    failover: Failover | None = None,
    sync: tuple[str, ...] = (),
    members: tuple[Member, ...] | None = None,
    history: tuple[HistoryEntry, ...] = (),
) -> ClusterView:
    if members is None:
        members = (
            member("n1", 5432, role="primary", lsn=100 * MIB),
            member("n2", 5433, lsn=100 * MIB),
            member("n3", 5434, lsn=90 * MIB, tags={"replicatefrom": "n2"}),
        )
    return ClusterView(
        scope="demo",
        leader=Leader(leader, 7) if leader else None,
        members=members,
        config=Record(dict(BASE_CONFIG if config is None else config), 42),
        initialize="7301234567890123456",
        history=History(history, 3),
        failover=failover,
        sync=SyncState(leader, sync) if sync else None,
        status=LeaderStatus(100 * MIB + 3 * MIB // 2),
    )


class FakeStore:
    """The DCS boundary: serves a view, records CAS writes (and can lose the race)."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.writes: list[tuple[dict[str, Any], int | None]] = []
        self.deleted: list[int | None] = []
        self.cas_ok = True

    def get_cluster(self) -> ClusterView:
        return self.view

    def set_config(self, data: Mapping[str, Any], version: int | None) -> bool:
        self.writes.append((json.loads(json.dumps(dict(data))), version))
        if not self.cas_ok:
            return False
        self.view = replace(self.view, config=Record(dict(data), (version or 0) + 1))
        return True

    def delete_failover(self, version: int | None = None) -> bool:
        self.deleted.append(version)
        self.view = replace(self.view, failover=None)
        return True

    def close(self) -> None:
        pass


@dataclass
class FakeAgents(AgentApi):
    """The REST boundary's transport: canned replies per (method, URL), every call recorded."""

    replies: Mapping[tuple[str, str], AgentReply | Exception] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)

    def _send(
        self, method: str, url: str, body: dict[str, Any] | None, timeout: float, total: float | None
    ) -> AgentReply:
        self.calls.append((method, url, body))
        reply = self.replies.get((method, url), AgentReply(200, "ok"))
        if isinstance(reply, Exception):
            raise reply
        return reply


def run(
    args: list[str],
    view: ClusterView | None = None,
    *,
    input: str | None = None,
    agents: FakeAgents | None = None,
) -> tuple[Any, FakeStore, FakeAgents]:
    store = FakeStore(view or make_view())
    fake_agents = agents or FakeAgents()

    def dcs_factory(target: Target) -> FakeStore:
        return store if target.scope == store.view.scope else FakeStore(ClusterView(scope=target.scope))

    clock = [0.0]  # a fake clock: sleeping advances it, so waits are instant and bounded

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    rt = Runtime(dcs_factory=dcs_factory, agent_factory=lambda _t: fake_agents, sleep=sleep, monotonic=lambda: clock[0])
    runner = CliRunner(env={"PGDR_CONFIG": None})
    result = runner.invoke(cli, [*args, "--dcs-url", "http://127.0.0.1:2379", "--scope", "demo"], obj=rt, input=input)
    return result, store, fake_agents


def error_lines(result: Any) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_member_host_from_url_and_conninfo() -> None:
    assert cv.member_host("postgresql://u@10.0.0.1:5433/db") == "10.0.0.1:5433"
    assert cv.member_host("host=db1 port=6432 dbname=x") == "db1:6432"
    assert cv.member_host("host=db1") == "db1"
    assert cv.member_host("") == ""
    assert cv.member_host("not a valid = = conninfo '") == ""


def test_lag_in_mb_against_leader_status_lsn() -> None:
    view = make_view()
    rows = {m["name"]: m for m in cv.cluster_doc(view)["members"]}
    assert rows["n1"]["lag_mb"] is None  # the leader shows no lag
    assert rows["n2"]["lag_bytes"] == 3 * MIB // 2
    assert rows["n2"]["lag_mb"] == 2  # round(1.5)
    assert rows["n3"]["lag_mb"] == round((10 * MIB + 3 * MIB // 2) / MIB)


def test_lag_unknown_without_lsn_and_falls_back_to_leader_member() -> None:
    view = replace(make_view(), status=None)
    n4 = member("n4", 5435, lsn=None)
    view = replace(view, members=(*view.members, n4))
    doc = cv.cluster_doc(view)
    rows = {m["name"]: m for m in doc["members"]}
    assert rows["n4"]["lag_mb"] is None
    assert rows["n2"]["lag_bytes"] == 0  # leader member record (100 MiB) - 100 MiB
    table = cv.table_rows(doc, topology=False)
    assert next(r for r in table if r[0] == "n4")[5] == "unknown"


def test_roles() -> None:
    view = make_view(sync=("n2",))
    roles = {m.name: member_role(view, m) for m in view.members}
    assert roles == {"n1": "leader", "n2": "sync_standby", "n3": "replica"}
    standby = make_view(members=(member("n1", 5432, role="standby_leader", lsn=1),))
    assert member_role(standby, standby.members[0]) == "standby_leader"
    unlocked = make_view(leader=None)
    assert member_role(unlocked, unlocked.members[0]) == "unlocked_primary"
    labels = [r[2] for r in cv.table_rows(cv.cluster_doc(view), topology=False)]
    assert labels == ["Leader", "Sync Standby", "Replica"]
    assert cv.table_rows(cv.cluster_doc(standby), topology=False)[0][2] == "Standby Leader"


def test_topology_order_cascades_and_survives_cycles() -> None:
    view = make_view(
        members=(
            member("a", 1, role="primary", lsn=1),
            member("b", 2, lsn=1),
            member("c", 3, lsn=1, tags={"replicatefrom": "b"}),
            member("d", 4, lsn=1, tags={"replicatefrom": "c"}),
            member("e", 5, lsn=1, tags={"replicatefrom": "ghost"}),  # unknown upstream -> leader
        ),
        leader="a",
    )
    assert [(m.name, d) for m, d in cv.topology_order(view)] == [
        ("a", 0),
        ("b", 1),
        ("c", 2),
        ("d", 3),
        ("e", 1),
    ]
    names = [r[0] for r in cv.table_rows(cv.cluster_doc(view, topology=True), topology=True)]
    assert names == ["a", "+ b", "  + c", "    + d", "+ e"]
    cyc = make_view(
        leader=None,
        members=(member("x", 1, tags={"replicatefrom": "y"}), member("y", 2, tags={"replicatefrom": "x"})),
    )
    assert sorted(m.name for m, _ in cv.topology_order(cyc)) == ["x", "y"]


def test_render_cluster_header_footer_and_alignment() -> None:
    at = "2030-01-01T00:00:00+00:00"
    view = make_view(config={**BASE_CONFIG, "pause": True}, failover=Failover("n1", "n2", at))
    text = cv.render_cluster(cv.cluster_doc(view), topology=False)
    lines = text.splitlines()
    assert lines[0].startswith("+ Cluster: demo (7301234567890123456) ")
    assert lines[0].endswith("+")
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == list(cv.LIST_COLUMNS)
    assert {len(ln) for ln in lines[:-2]} == {len(lines[0])}  # a rectangle
    assert " Maintenance mode: on" in lines
    assert f" Switchover scheduled at: {at} from: n1 to: n2" in lines
    n2 = next(ln for ln in lines if ln.startswith("| n2 "))
    assert n2.rstrip("|").rstrip().endswith("2")  # lag right-aligned


def test_render_table_widens_for_long_title() -> None:
    text = cv.render_table(["A"], [["x"]], title="Cluster: a-very-long-cluster-name (uninitialized)")
    lines = text.splitlines()
    assert lines[0].startswith("+ Cluster: a-very-long-cluster-name (uninitialized) ")
    assert len({len(ln) for ln in lines}) == 1


def test_history_rows_format_lsn() -> None:
    view = make_view(history=(HistoryEntry(1, 0x3000060, "switchover", "2024-01-01T00:00:00+00:00", "n2"),))
    docs = cv.history_docs(view)
    assert docs[0]["lsn_text"] == "0/3000060"
    assert cv.history_rows(docs) == [["1", "0/3000060", "switchover", "2024-01-01T00:00:00+00:00", "n2"]]


def test_build_new_config_sets_params_apply_replace() -> None:
    cur = dict(BASE_CONFIG)
    new = ce.build_new_config(
        cur,
        sets=["ttl=40", "postgresql.use_slots=false", "synchronous_mode=on"],
        params=["max_connections=200", "hot_standby=on", "work_mem='4MB'"],
    )
    assert new["ttl"] == 40
    assert new["postgresql"]["use_slots"] is False
    assert new["synchronous_mode"] is True
    assert new["postgresql"]["parameters"] == {"max_connections": 200, "hot_standby": "on", "work_mem": "4MB"}
    assert cur == BASE_CONFIG  # not mutated
    patched = ce.build_new_config(cur, apply_doc={"loop_wait": 5, "postgresql": {"parameters": None}})
    assert patched["loop_wait"] == 5 and "parameters" not in patched["postgresql"]
    deleted = ce.build_new_config(cur, sets=["maximum_lag_on_failover=null"])
    assert "maximum_lag_on_failover" not in deleted
    assert ce.build_new_config(cur, replace_doc={"ttl": 60}) == {"ttl": 60}
    with pytest.raises(CliError, match="KEY=VALUE"):
        ce.build_new_config(cur, sets=["ttl"])
    with pytest.raises(CliError, match="empty component"):
        ce.build_new_config(cur, sets=["a..b=1"])


def test_validate_dynamic_one_line_naming_field() -> None:
    with pytest.raises(CliError) as exc:
        ce.validate_dynamic({**BASE_CONFIG, "ttl": "soon"})
    msg = str(exc.value)
    assert "\n" not in msg and "`ttl`" in msg
    with pytest.raises(CliError, match="ttl"):
        ce.validate_dynamic({**BASE_CONFIG, "ttl": 20})  # invariant 2: 10 + 2*10 > 20
    with pytest.raises(CliError, match="nonsense"):
        ce.validate_dynamic({**BASE_CONFIG, "nonsense": 1})
    ce.validate_dynamic(BASE_CONFIG)


def test_config_diff() -> None:
    assert ce.config_diff(BASE_CONFIG, BASE_CONFIG) == ""
    diff = ce.config_diff(BASE_CONFIG, {**BASE_CONFIG, "ttl": 40})
    assert "--- before" in diff and "-ttl: 30" in diff and "+ttl: 40" in diff


def test_parse_when() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert cs.parse_when("now", now) is None
    assert cs.parse_when("2030-01-02T00:00Z", now) == datetime(2030, 1, 2, tzinfo=UTC)
    naive = cs.parse_when("2031-01-01T00:00", now)
    assert naive is not None and naive.tzinfo is not None
    with pytest.raises(CliError, match="in the past"):
        cs.parse_when("2029-01-01T00:00+00:00", now)
    with pytest.raises(CliError, match="ISO 8601"):
        cs.parse_when("tomorrow", now)


def test_split_cluster_args() -> None:
    members = {"n1", "n2"}
    assert cs.split_cluster_args([], "demo", members.__contains__) == (None, [])
    assert cs.split_cluster_args(["demo", "n1"], "demo", members.__contains__) == ("demo", ["n1"])
    assert cs.split_cluster_args(["n1", "n2"], "demo", members.__contains__) == (None, ["n1", "n2"])
    assert cs.split_cluster_args(["other", "x"], "demo", members.__contains__) == ("other", ["x"])
    assert cs.split_cluster_args(["n1"], None, members.__contains__) == ("n1", [])


def test_choose_dsn_member() -> None:
    view = make_view()
    assert cs.choose_dsn_member(view, "leader", None).name == "n1"
    assert cs.choose_dsn_member(view, "replica", None).name == "n2"  # least lag
    assert cs.choose_dsn_member(view, "any", "n3").name == "n3"
    assert cs.dsn_of(view.members[1]) == "host=127.0.0.1 port=5433"
    with pytest.raises(CliError, match="no leader"):
        cs.choose_dsn_member(make_view(leader=None), "leader", None)
    with pytest.raises(CliError, match="not in cluster"):
        cs.choose_dsn_member(view, "any", "ghost")


# ---------------------------------------------------------------------------------------------
# Target selection


AGENT_YAML = agent_yaml(
    head="scope: pg-main\nnamespace: /svc\nname: node1\n",
    rest="  authentication: {username: pgdr, password: pw}\n",
    hosts="[127.0.0.1:2379, 127.0.0.1:2380]",
    data_dir="/tmp/x",
    superuser="{username: postgres, password: a}",
    replication="{username: replicator, password: b}",
)


def test_load_agent_config_target(tmp_path: Path) -> None:
    p = tmp_path / "agent.yml"
    p.write_text(AGENT_YAML)
    base = load_target_file(p)
    assert base.scope == "pg-main" and base.namespace == "/svc"
    assert base.dcs is not None and base.dcs.hosts == ["127.0.0.1:2379", "127.0.0.1:2380"]
    assert base.rest.username == "pgdr" and base.rest.password == "pw"


def test_load_drctl_config_target_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "drctl.yml"
    p.write_text(
        yaml.safe_dump(
            {
                "dcs": {"consul": {"host": "10.0.0.9", "port": 8501}},
                "scope": "main",
                "restapi": {"username": "u", "password": "p"},
            }
        )
    )
    base = load_target_file(p)
    assert base.dcs is not None and base.dcs.backend == "consul" and base.namespace == "/service"
    over = resolve_base({"config": str(p), "dcs_url": "http://a:1,https://b:2", "scope": "other"})
    assert over.dcs is not None and over.dcs.hosts == ["http://a:1", "https://b:2"]
    assert over.scope == "other" and over.rest.username == "u"


def test_bad_config_field_names_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "drctl.yml"
    p.write_text("dcs: {etcd: {hostz: [a:1]}}\nscope: x\n")
    with pytest.raises(CliError) as exc:
        load_target_file(p)
    msg = str(exc.value)
    assert str(p) in msg and "dcs.etcd.hostz" in msg and "\n" not in msg
    p.write_text(AGENT_YAML.replace("scope: pg-main", "scope: pg-main\nnmae: typo"))
    with pytest.raises(CliError) as exc:
        load_target_file(p)
    assert "nmae" in str(exc.value) and "\n" not in str(exc.value)


def test_parse_dcs_url() -> None:
    assert parse_dcs_url("http://h1:2379,h2").hosts == ["http://h1:2379", "http://h2:2379"]
    assert parse_dcs_url("etcd3://h:1").hosts == ["http://h:1"]
    consul = parse_dcs_url("consul://c:8500")
    assert consul.consul is not None and consul.consul.host == "c" and consul.consul.port == 8500
    for bad in ("ftp://h:1", "http://a:1,consul://b:2", "", "http://:1"):
        with pytest.raises(CliError):
            parse_dcs_url(bad)


def _cli_plain(args: list[str], env: dict[str, str | None] | None = None) -> Any:
    return CliRunner(env={"PGDR_CONFIG": None, **(env or {})}).invoke(cli, args)


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = _cli_plain(["list", "-c", str(tmp_path / "nope.yml")])
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "nope.yml" in lines[0] and "cannot read" in lines[0]
    assert "Traceback" not in result.output


def test_config_from_env_and_no_target(tmp_path: Path) -> None:
    result = _cli_plain(["list"])
    assert result.exit_code == 1 and "no DCS" in result.stderr
    p = tmp_path / "drctl.yml"
    p.write_text("dcs: {etcd: {hosts: ['127.0.0.1:1']}}\nscopee: x\n")
    result = _cli_plain(["list"], env={"PGDR_CONFIG": str(p)})
    assert result.exit_code == 1 and "scopee" in result.stderr and str(p) in result.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_dcs_is_one_line_and_fast() -> None:
    port = _closed_port()
    started = time.monotonic()
    result = _cli_plain(["list", "--dcs-url", f"http://127.0.0.1:{port}", "--scope", "demo"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "did not answer" in lines[0]
    assert "Traceback" not in result.output
    assert elapsed < 10


# ---------------------------------------------------------------------------------------------
# Read verbs


def test_list_table_and_json() -> None:
    result, _, _ = run(["list"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("+ Cluster: demo (7301234567890123456) ")
    assert "| Member | Host" in result.stdout and "Lag in MB" in result.stdout
    result, _, _ = run(["list", "--format", "json"])
    doc = json.loads(result.stdout)
    assert doc["cluster"] == "demo" and doc["leader"] == "n1" and doc["pause"] is False
    assert [m["name"] for m in doc["members"]] == ["n1", "n2", "n3"]
    n3 = doc["members"][2]
    assert n3["upstream"] == "n2" and n3["depth"] == 2 and n3["host"] == "127.0.0.1:5434"
    result, _, _ = run(["list", "--format", "yaml", "-e"])
    assert yaml.safe_load(result.stdout)["system_id"] == "7301234567890123456"


def test_list_extended_and_positional_cluster() -> None:
    result, _, _ = run(["list", "demo", "-e"])
    assert result.exit_code == 0
    assert "Pending restart" in result.stdout and "replicatefrom: n2" in result.stdout


def test_topology_indents() -> None:
    result, _, _ = run(["topology"])
    assert result.exit_code == 0
    body = [ln for ln in result.stdout.splitlines() if ln.startswith("| ")]
    assert [ln.split("|")[1].strip() for ln in body[1:]] == ["n1", "+ n2", "+ n3"]
    assert "|   + n3 " in result.stdout


def test_unknown_cluster() -> None:
    empty = ClusterView(scope="demo")
    result, _, _ = run(["list"], empty)
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1 and "not found" in result.stderr


def test_history_and_show_config_and_dsn() -> None:
    view = make_view(history=(HistoryEntry(1, 0x3000060, "switchover", "2024-01-01T00:00:00+00:00", "n1"),))
    result, _, _ = run(["history"], view)
    assert result.exit_code == 0
    assert "| TL | LSN " in result.stdout and "0/3000060" in result.stdout and "New Leader" in result.stdout
    result, _, _ = run(["history", "--format", "json"], view)
    assert json.loads(result.stdout)[0]["lsn"] == 0x3000060
    result, _, _ = run(["show-config"], view)
    assert yaml.safe_load(result.stdout) == BASE_CONFIG
    result, _, _ = run(["dsn", "--role", "replica"], view)
    assert result.stdout.strip() == "host=127.0.0.1 port=5433"
    result, _, _ = run(["dsn", "--member", "ghost"], view)
    assert result.exit_code == 1 and "ghost" in result.stderr and "members: n1, n2, n3" in result.stderr


def test_watch_stops_on_interrupt() -> None:
    store = FakeStore(make_view())
    ticks = []

    def sleep(_s: float) -> None:
        ticks.append(1)
        if len(ticks) >= 2:
            raise KeyboardInterrupt

    rt = Runtime(dcs_factory=lambda _t: store, agent_factory=lambda _t: FakeAgents(), sleep=sleep)
    result = CliRunner(env={"PGDR_CONFIG": None}).invoke(
        cli, ["list", "-W", "--dcs-url", "http://h:1", "--scope", "demo"], obj=rt
    )
    assert result.exit_code == 0
    assert result.stdout.count("+ Cluster: demo") == 2


# ---------------------------------------------------------------------------------------------
# Mutations through the agents


def test_switchover_force_posts_to_leader() -> None:
    agents = FakeAgents(
        {("POST", "http://127.0.0.1:8432/switchover"): AgentReply(200, "Successfully switched over to n2")}
    )
    result, _, agents = run(["switchover", "--candidate", "n2", "--force"], agents=agents)
    assert result.exit_code == 0, result.output
    assert agents.calls == [("POST", "http://127.0.0.1:8432/switchover", {"leader": "n1", "candidate": "n2"})]
    assert "Successfully switched over to n2" in result.stdout


def test_switchover_confirmation() -> None:
    result, _, agents = run(["switchover", "--leader", "n1"], input="n\n")
    assert result.exit_code == 1 and agents.calls == []
    assert "demoting current leader n1" in result.stdout
    result, _, agents = run(["switchover"], input="y\n")
    assert result.exit_code == 0 and agents.calls[0][2] == {"leader": "n1"}


def test_switchover_scheduled_and_errors() -> None:
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    result, _, agents = run(["switchover", "--scheduled", when.isoformat(), "--force"])
    assert result.exit_code == 0
    assert agents.calls[0][2]["scheduled_at"] == when.isoformat()
    refused = FakeAgents(
        {("POST", "http://127.0.0.1:8432/switchover"): AgentReply(412, "candidate n3 is not eligible: lagging")}
    )
    result, _, _ = run(["switchover", "--candidate", "n3", "--force"], agents=refused)
    assert result.exit_code == 1
    assert error_lines(result) == ["error: switchover refused by n1 (HTTP 412): candidate n3 is not eligible: lagging"]
    for args, text in (
        (["--candidate", "ghost"], "ghost"),
        (["--leader", "n2"], "not the leader"),
        (["--candidate", "n1"], "already the leader"),
        (["--scheduled", "2001-01-01T00:00+00:00"], "in the past"),
    ):
        result, _, agents = run(["switchover", "--force", *args])
        assert result.exit_code == 1 and text in result.stderr and agents.calls == []
        assert len(error_lines(result)) == 1
    result, _, _ = run(["switchover", "--force"], make_view(leader=None))
    assert result.exit_code == 1 and "failover" in result.stderr


def test_switchover_unreachable_leader_and_auth() -> None:
    agents = FakeAgents({("POST", "http://127.0.0.1:8432/switchover"): AgentUnreachable("cannot reach the agent")})
    result, _, _ = run(["switchover", "--force"], agents=agents)
    assert result.exit_code == 1 and error_lines(result) == ["error: cannot reach the agent"]
    agents = FakeAgents({("POST", "http://127.0.0.1:8432/switchover"): AgentReply(401, "authentication required")})
    result, _, _ = run(["switchover", "--force"], agents=agents)
    assert result.exit_code == 1 and "restapi.username" in result.stderr


def test_failover_goes_to_candidate_without_leader() -> None:
    result, _, agents = run(["failover", "--candidate", "n2", "--force"], make_view(leader=None))
    assert result.exit_code == 0, result.output
    assert agents.calls == [("POST", "http://127.0.0.1:8433/failover", {"candidate": "n2"})]
    # with a leader: the leader first, the candidate when the leader cannot be reached
    agents = FakeAgents({("POST", "http://127.0.0.1:8432/failover"): AgentUnreachable("down")})
    result, _, agents = run(["failover", "--candidate", "n3", "--force"], agents=agents)
    assert result.exit_code == 0
    assert [c[1] for c in agents.calls] == [
        "http://127.0.0.1:8432/failover",
        "http://127.0.0.1:8434/failover",
    ]
    result, _, _ = run(["failover", "--force"])
    assert result.exit_code == 2  # --candidate is required (click usage error)
    agents = FakeAgents({("POST", "http://127.0.0.1:8432/failover"): AgentReply(503, "DCS unreachable")})
    result, _, _ = run(["failover", "--candidate", "n2", "--force"], agents=agents)
    assert result.exit_code == 1 and "HTTP 503" in result.stderr and "DCS unreachable" in result.stderr


def test_restart_members_and_filters() -> None:
    result, _, agents = run(["restart", "--force"])
    assert result.exit_code == 0
    assert [c[1] for c in agents.calls] == [f"http://127.0.0.1:{p}/restart" for p in (8432, 8433, 8434)]
    result, _, agents = run(["restart", "n2", "--force", "--pending", "--timeout", "30"])
    assert agents.calls == [("POST", "http://127.0.0.1:8433/restart", {"restart_pending": True, "timeout": 30.0})]
    result, _, agents = run(["restart", "demo", "--role", "replica", "--force"])
    assert [c[1] for c in agents.calls] == ["http://127.0.0.1:8433/restart", "http://127.0.0.1:8434/restart"]
    agents = FakeAgents({("POST", "http://127.0.0.1:8433/restart"): AgentReply(503, "not finished")})
    result, _, _ = run(["restart", "--force"], agents=agents)
    assert result.exit_code == 1
    assert "Failed: restart for member n2, status code=503, (not finished)" in result.stderr
    assert "Success: restart on member n1" in result.stdout
    result, _, agents = run(["restart", "ghost", "--force"])
    assert result.exit_code == 1 and agents.calls == []
    assert error_lines(result) == [
        "error: 'ghost' is neither a member of cluster 'demo' (members: n1, n2, n3) nor a cluster in the DCS"
    ]
    result, _, agents = run(["restart", "demo", "ghost", "--force"])
    assert result.exit_code == 1 and "member 'ghost' is not in cluster 'demo'" in result.stderr
    result, _, agents = run(["restart", "n1"], input="n\n")
    assert result.exit_code == 1 and agents.calls == []


def test_reinit() -> None:
    result, _, agents = run(["reinit", "n3", "--force"])
    assert result.exit_code == 0
    assert agents.calls == [("POST", "http://127.0.0.1:8434/reinitialize", {"force": True})]
    result, _, agents = run(["reinit", "demo", "n2"], input="y\n")
    assert result.exit_code == 0 and agents.calls[0][2] == {"force": False}
    result, _, agents = run(["reinit", "n1", "--force"])
    assert result.exit_code == 1 and "is the leader" in result.stderr and agents.calls == []
    result, _, _ = run(["reinit", "n2", "--force", "--wait", "--timeout", "5"])
    assert result.exit_code == 0 and "running" in result.stdout


def test_flush_switchover() -> None:
    pending = make_view(failover=Failover("n1", "n2", "2030-01-01T00:00:00+00:00", version=9))
    result, store, agents = run(["flush", "switchover"], pending)
    assert result.exit_code == 0
    assert agents.calls == [("DELETE", "http://127.0.0.1:8432/switchover", None)] and store.deleted == []
    down = FakeAgents({("DELETE", "http://127.0.0.1:8432/switchover"): AgentUnreachable("down")})
    result, store, _ = run(["flush", "demo", "switchover"], pending, agents=down)
    assert result.exit_code == 0 and store.deleted == [9]
    result, _, _ = run(["flush", "switchover"])
    assert result.exit_code == 0 and "No pending" in result.stdout
    result, _, _ = run(["flush", "restart"])
    assert result.exit_code == 1 and "only `switchover`" in result.stderr


# ---------------------------------------------------------------------------------------------
# DCS config writes


def test_pause_resume_cas() -> None:
    result, store, _ = run(["pause"])
    assert result.exit_code == 0, result.output
    assert store.writes == [({**BASE_CONFIG, "pause": True}, 42)]
    result, store, _ = run(["pause"], make_view(config={**BASE_CONFIG, "pause": True}))
    assert result.exit_code == 1 and "already paused" in result.stderr and store.writes == []
    result, store, _ = run(["resume"], make_view(config={**BASE_CONFIG, "pause": True}))
    assert result.exit_code == 0 and store.writes[0][0]["pause"] is False
    result, _, _ = run(["resume"])
    assert result.exit_code == 1 and "not paused" in result.stderr


def test_pause_wait_polls_members() -> None:
    statuses = {
        (
            "GET",
            f"http://127.0.0.1:{p}/status",
        ): AgentReply(200, "{}", {"pause": True})
        for p in (8432, 8433, 8434)
    }
    result, _, agents = run(["pause", "--wait"], agents=FakeAgents(statuses))
    assert result.exit_code == 0 and "Success" in result.stdout
    assert {c[1] for c in agents.calls} == {f"http://127.0.0.1:{p}/status" for p in (8432, 8433, 8434)}


def test_pause_wait_times_out() -> None:
    store = FakeStore(make_view())
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    statuses = {
        ("GET", f"http://127.0.0.1:{p}/status"): AgentReply(200, "{}", {"pause": False}) for p in (8432, 8433, 8434)
    }
    statuses[("GET", "http://127.0.0.1:8432/status")] = AgentReply(200, "{}", {"pause": True})
    agents = FakeAgents(statuses)
    rt = Runtime(dcs_factory=lambda _t: store, agent_factory=lambda _t: agents, sleep=sleep, monotonic=lambda: clock[0])
    result = CliRunner(env={"PGDR_CONFIG": None}).invoke(
        cli, ["pause", "--wait", "--timeout", "5", "--dcs-url", "http://h:1", "--scope", "demo"], obj=rt
    )
    assert result.exit_code == 1
    assert error_lines(result) == ["error: written, but not yet applied after 5s by: n2, n3"]


def test_edit_config_set_diff_and_force() -> None:
    result, store, _ = run(["edit-config", "-s", "ttl=40", "-p", "max_connections=200", "--force"])
    assert result.exit_code == 0, result.output
    assert "-ttl: 30" in result.stdout and "+ttl: 40" in result.stdout
    assert "+    max_connections: 200" in result.stdout
    new, version = store.writes[0]
    assert version == 42 and new["ttl"] == 40 and new["postgresql"]["parameters"]["max_connections"] == 200


def test_edit_config_confirm_declined_and_noop() -> None:
    result, store, _ = run(["edit-config", "-s", "ttl=40"], input="n\n")
    assert result.exit_code == 1 and store.writes == []
    result, store, _ = run(["edit-config", "-s", "ttl=30", "--force"])
    assert result.exit_code == 0 and "Not changed" in result.stdout and store.writes == []


def test_edit_config_bad_value_one_line() -> None:
    result, store, _ = run(["edit-config", "-s", "loop_wait=abc", "--force"])
    assert result.exit_code == 1 and store.writes == []
    lines = error_lines(result)
    assert len(lines) == 1 and "loop_wait" in lines[0] and lines[0].startswith("error: invalid configuration")


def test_edit_config_concurrent_change() -> None:
    store = FakeStore(make_view())
    store.cas_ok = False
    rt = Runtime(dcs_factory=lambda _t: store, agent_factory=lambda _t: FakeAgents())
    result = CliRunner(env={"PGDR_CONFIG": None}).invoke(
        cli, ["edit-config", "-s", "ttl=40", "--force", "--dcs-url", "http://h:1", "--scope", "demo"], obj=rt
    )
    assert result.exit_code == 1
    assert "config changed since read" in result.stderr and "retry" in result.stderr
    assert store.writes == [({**BASE_CONFIG, "ttl": 40}, 42)]


def test_edit_config_apply_and_replace_files(tmp_path: Path) -> None:
    patch = tmp_path / "patch.yml"
    patch.write_text("maximum_lag_on_failover: 0\npostgresql: {parameters: {work_mem: 8MB}}\n")
    result, store, _ = run(["edit-config", "--apply", str(patch), "--force", "-q"])
    assert result.exit_code == 0 and "---" not in result.stdout
    assert store.writes[0][0]["maximum_lag_on_failover"] == 0
    assert store.writes[0][0]["postgresql"]["parameters"] == {"max_connections": 100, "work_mem": "8MB"}
    result, store, _ = run(["edit-config", "--replace", "-", "--force"], input="ttl: 60\nloop_wait: 10\n")
    assert result.exit_code == 0 and store.writes[0][0] == {"ttl": 60, "loop_wait": 10}
    result, store, _ = run(["edit-config", "--apply", str(tmp_path / "missing.yml"), "--force"])
    assert result.exit_code == 1 and "missing.yml" in result.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("- a list\n")
    result, _, _ = run(["edit-config", "--apply", str(bad), "--force"])
    assert result.exit_code == 1 and "mapping" in result.stderr
    result, _, _ = run(["edit-config", "--force"])
    assert result.exit_code == 1 and "nothing to change" in result.stderr


# ---------------------------------------------------------------------------------------------
# The real agent client against the real REST server


class _Control:
    def __init__(self) -> None:
        self.switchovers: list[tuple[Any, ...]] = []

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(name="n1", scope="demo", paused=True)

    def live_xlog(self) -> dict[str, int] | None:
        return None

    def cluster(self) -> ClusterView | None:
        return make_view()

    def request_switchover(self, leader: Any, candidate: Any, scheduled_at: Any) -> tuple[int, str]:
        self.switchovers.append((leader, candidate, scheduled_at))
        if candidate == "n3":
            return 412, "candidate n3 is not eligible: lagging"
        return 200, f"Successfully switched over to {candidate}"


def test_agent_client_against_real_api() -> None:
    control = _Control()
    with start_api(control, "127.0.0.1:0", auth=("pgdr", "pw")) as api:  # type: ignore[arg-type]
        good = AgentClient(RestAuth("pgdr", "pw"))
        reply = good.request("POST", api.url, "/switchover", {"leader": "n1", "candidate": "n2"})
        assert reply.ok and reply.message == "Successfully switched over to n2"
        reply = good.request("POST", api.url, "/switchover", {"leader": "n1", "candidate": "n3"})
        assert reply.status == 412 and "not eligible" in reply.message
        status = good.request("GET", api.url, "/status")
        assert status.ok and status.doc["pause"] is True
        anonymous = AgentClient()
        assert anonymous.request("POST", api.url, "/switchover", {"leader": "n1"}).status == 401
        assert len(control.switchovers) == 2
    with pytest.raises(AgentUnreachable, match="cannot reach the agent"):
        AgentClient().request("GET", f"http://127.0.0.1:{_closed_port()}", "/status")


def test_target_is_hashable_value() -> None:
    # Target is what factories receive; it must carry the scope and the REST credentials.
    base = resolve_base({"dcs_url": "http://h:1", "scope": "demo"})
    assert base.dcs is not None
    t = Target(dcs=base.dcs, namespace="/service", scope="demo", rest=RestAuth("u", "p"), source="--dcs-url")
    assert t.hosts_text == "http://h:1"


def test_target_options_on_a_parent_group(tmp_path: Path) -> None:
    """`drctl -c FILE list`: the options may sit on the group; a verb's own value wins, and an
    environment default on the verb does not override the group's explicit value."""
    import click

    from drctl.cli.context import target_options

    @click.group()
    @target_options
    def group() -> None:
        pass

    group.add_command(cc.list_cmd)
    p = tmp_path / "drctl.yml"
    p.write_text("dcs: {etcd: {hosts: ['127.0.0.1:2379']}}\nscope: demo\n")
    seen: list[str] = []
    store = FakeStore(make_view())

    def factory(target: Target) -> FakeStore:
        seen.append(target.scope)
        return store

    rt = Runtime(dcs_factory=factory, agent_factory=lambda _t: FakeAgents())
    runner = CliRunner(env={"PGDR_CONFIG": str(tmp_path / "absent.yml")})
    result = runner.invoke(group, ["-c", str(p), "list"], obj=rt)
    assert result.exit_code == 0, result.output
    result = runner.invoke(group, ["-c", str(p), "list", "--scope", "other"], obj=rt)
    assert seen == ["demo", "other"]


def test_join_url_drops_the_published_path() -> None:
    from drctl.cli.agent_client import join_url

    assert join_url("http://127.0.0.1:8008/status", "/switchover") == "http://127.0.0.1:8008/switchover"
    assert join_url("https://[::1]:8008/patroni", "restart") == "https://[::1]:8008/restart"
    assert join_url("http://h:1", "/status") == "http://h:1/status"


def test_restart_pending_skips_members_without_pending_restart() -> None:
    agents = FakeAgents(
        {("POST", "http://127.0.0.1:8433/restart"): AgentReply(412, "restart not done: no restart is pending")}
    )
    result, _, _ = run(["restart", "--pending", "--force"], agents=agents)
    assert result.exit_code == 0, result.output
    assert "Skipped: member n2 (restart not done: no restart is pending)" in result.stdout


class _SequenceStore(FakeStore):
    """Serves a different view on each read (the last one repeats)."""

    def __init__(self, views: list[ClusterView]) -> None:
        super().__init__(views[0])
        self.views = views

    def get_cluster(self) -> ClusterView:
        return self.views.pop(0) if len(self.views) > 1 else self.views[0]


def test_reinit_wait_sees_the_rebuild_then_running() -> None:
    base = make_view()

    def with_state(state: str) -> ClusterView:
        n3 = base.members[2]
        return replace(base, members=(*base.members[:2], replace(n3, info=replace(n3.info, state=state))))

    store = _SequenceStore([base, with_state("rebuilding"), with_state("rebuilding"), base])
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    rt = Runtime(
        dcs_factory=lambda _t: store, agent_factory=lambda _t: FakeAgents(), sleep=sleep, monotonic=lambda: clock[0]
    )
    args = ["reinit", "n3", "--force", "--wait", "--dcs-url", "http://h:1", "--scope", "demo"]
    result = CliRunner(env={"PGDR_CONFIG": None}).invoke(cli, args, obj=rt)
    assert result.exit_code == 0, result.output
    assert "Success: n3 running" in result.stdout and clock[0] == 3.0
    stuck = _SequenceStore([base, with_state("rebuilding")])
    rt.dcs_factory = lambda _t: stuck
    result = CliRunner(env={"PGDR_CONFIG": None}).invoke(cli, [*args, "--timeout", "5"], obj=rt)
    assert result.exit_code == 1 and error_lines(result) == ["error: not running after 5s: n3"]
