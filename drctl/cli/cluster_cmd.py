"""`drctl` cluster verbs, patronictl-style: list, topology, switchover, failover, restart, reinit,
flush, pause, resume, show-config, edit-config, history, dsn.

Target selection (see drctl.cli.context): ``-c/--config FILE`` (or ``$PGDR_CONFIG``), a site-agent
or drctl configuration; ``--dcs-url``, ``--namespace``, ``--scope`` override it; the cluster name can
be given positionally (``drctl list pg-main``). Reads go to the DCS (3 s retry budget: an
unreachable DCS gives one error line naming the hosts); mutations go to the agents' REST API with
HTTP Basic auth (switchover/failover to the leader, restart/reinit to each member), except
pause/resume/edit-config, which write the DCS ``config`` key with compare-and-swap.

Every failure is one ``error: ...`` line on stderr and a non-zero exit code (1; 130 when
interrupted; a declined confirmation prints ``Aborted!`` and exits 1).

Table output (``list``, ``topology``)::

    + Cluster: pg-main (7301234567890123456) --+---------+----+-----------+
    | Member | Host           | Role         | State   | TL | Lag in MB |
    +--------+----------------+--------------+---------+----+-----------+
    | node1  | 127.0.0.1:5432 | Leader       | running |  2 |           |
    | node2  | 127.0.0.1:5433 | Sync Standby | running |  2 |         0 |
    +--------+----------------+--------------+---------+----+-----------+
     Maintenance mode: on
     Switchover scheduled at: 2030-01-01T00:00:00+00:00 from: node1 to: node2

``topology`` prints the same rows in tree order, a cascading replica (tag ``replicatefrom``)
indented under its upstream as ``+ name`` (two more spaces per level). ``-e/--extended`` adds
the Pending restart and Tags columns.

JSON/YAML document of ``list``/``topology`` (``--format json|yaml``), stable for programs::

    {
      "cluster": "pg-main",
      "system_id": "7301234567890123456",     # null before bootstrap
      "leader": "node1",                       # null when nobody holds the leader key
      "pause": false,
      "scheduled_switchover": null,            # or {"at": ISO-8601, "from": NAME|null, "to": NAME|null}
      "members": [                             # list: by name; topology: tree order
        {
          "name": "node1",
          "host": "127.0.0.1:5432",            # "" when the conn_url has no host
          "role": "leader",                    # leader | standby_leader | sync_standby | replica |
                                               # unlocked_primary (says primary, holds no leader key)
          "state": "running",
          "timeline": 2,
          "lsn": 50331744,                     # bytes, null when unknown
          "lag_bytes": null,                   # null for the leader and when unknown
          "lag_mb": null,                      # round(lag_bytes / 1 MiB), null likewise
          "api_url": "http://127.0.0.1:8008",
          "upstream": null,                    # the member it replicates from (leader or replicatefrom)
          "depth": 0,                          # tree depth (0 = a root)
          "pending_restart": false,            # PostgreSQL waits for a restart to apply a setting
          "tags": {}
        }
      ]
    }

``history --format json``: a list of ``{"timeline", "lsn" (int), "lsn_text" ("0/3000060"),
"reason", "timestamp", "new_leader"}``.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import yaml

from drctl.agentconfig import ConfigError, parse_dynamic_config
from drctl.cli.agent_client import AgentReply, AgentUnreachable
from drctl.cli.context import (
    CliError,
    ClusterStore,
    Session,
    TargetBase,
    one_line,
    resolve_base,
    resolve_target,
    runtime,
    target_options,
    target_settings,
)
from drctl.cli.errors import operator_errors, register_operator_error
from drctl.cli.output import FORMATS, emit_structured
from drctl.common.hostport import format_host_port
from drctl.common.members import member_lag, member_role, upstream_of
from drctl.common.mergepatch import merge_patch, plain
from drctl.dcs.base import ClusterView, DCSError, Member
from drctl.pg.conninfo import ConninfoError, conninfo_address, make_conninfo, parse_conninfo
from drctl.pg.lsn import format_lsn
from drctl.yamlsafe import YamlError, decode_utf8, load_yaml

register_operator_error(CliError)
register_operator_error(AgentUnreachable)
register_operator_error(DCSError)

F = TypeVar("F", bound=Callable[..., Any])

MIB = 1 << 20
SWITCHOVER_TIMEOUT_S = 180.0  # the leader answers a switchover once it is done (or gave up)
ROLE_LABELS = {
    "leader": "Leader",
    "standby_leader": "Standby Leader",
    "sync_standby": "Sync Standby",
    "replica": "Replica",
    "unlocked_primary": "Primary (no leader key)",
}
LIST_COLUMNS = ("Member", "Host", "Role", "State", "TL", "Lag in MB")
EXTENDED_COLUMNS = ("Pending restart", "Tags")
HISTORY_COLUMNS = ("TL", "LSN", "Reason", "Timestamp", "New Leader")


# =============================================================================================
# Pure functions: rows, topology, tables


def member_host(conn_url: str) -> str:
    """``host:port`` of a member's conn_url (URL or conninfo), IPv6 in brackets; "" when it names no host."""
    address = conninfo_address(conn_url)
    return format_host_port(*address) if address is not None else ""


def lag_mb(lag: int | None) -> int | None:
    return None if lag is None else round(lag / MIB)


def topology_order(view: ClusterView) -> list[tuple[Member, int]]:
    """Members in tree order with their depth: roots (the leader first, then members without an
    upstream, by name), each followed by its downstream members (by name). Members caught in a
    replicatefrom cycle are shown as roots rather than lost."""
    children: dict[str | None, list[Member]] = {}
    for m in view.members:
        children.setdefault(upstream_of(view, m), []).append(m)
    for kids in children.values():
        kids.sort(key=lambda m: m.name)
    leader_name = view.leader.name if view.leader else None
    roots = sorted(children.get(None, []), key=lambda m: (m.name != leader_name, m.name))
    out: list[tuple[Member, int]] = []
    seen: set[str] = set()

    def walk(m: Member, depth: int) -> None:
        if m.name in seen:
            return
        seen.add(m.name)
        out.append((m, depth))
        for kid in children.get(m.name, []):
            walk(kid, depth + 1)

    for root in roots:
        walk(root, 0)
    for m in sorted(view.members, key=lambda m: m.name):
        if m.name not in seen:
            walk(m, 0)
    return out


def member_doc(view: ClusterView, member: Member, depth: int) -> dict[str, Any]:
    lag = member_lag(view, member)
    info = member.info
    return {
        "name": member.name,
        "host": member_host(info.conn_url),
        "role": member_role(view, member),
        "state": info.state,
        "timeline": info.timeline,
        "lsn": info.lsn,
        "lag_bytes": lag,
        "lag_mb": lag_mb(lag),
        "api_url": info.api_url,
        "upstream": upstream_of(view, member),
        "depth": depth,
        "pending_restart": bool(info.extra.get("pending_restart", False)),
        "tags": plain(info.tags),
    }


def cluster_doc(view: ClusterView, *, topology: bool = False) -> dict[str, Any]:
    """The JSON document of ``list`` / ``topology`` (documented in the module docstring)."""
    if topology:
        ordered = topology_order(view)
    else:
        depths = {m.name: d for m, d in topology_order(view)}
        ordered = [(m, depths.get(m.name, 0)) for m in sorted(view.members, key=lambda m: m.name)]
    scheduled = None
    if view.failover is not None and view.failover.scheduled_at:
        scheduled = {
            "at": view.failover.scheduled_at,
            "from": view.failover.leader,
            "to": view.failover.candidate,
        }
    return {
        "cluster": view.scope,
        "system_id": view.initialize or None,
        "leader": view.leader.name if view.leader else None,
        "pause": bool(view.config_data.get("pause", False)),
        "scheduled_switchover": scheduled,
        "members": [member_doc(view, m, d) for m, d in ordered],
        "corrupt_keys": [{"key": c.key, "reason": c.reason} for c in view.corrupt],
    }


def _tags_text(tags: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(tags.items()))


def table_rows(doc: Mapping[str, Any], *, topology: bool, extended: bool = False) -> list[list[str]]:
    rows = []
    for m in doc["members"]:
        name = m["name"]
        if topology and m["depth"] > 0:
            name = "  " * (m["depth"] - 1) + "+ " + name
        if m["role"] in ("leader", "standby_leader"):
            lag = ""
        else:
            lag = "unknown" if m["lag_mb"] is None else str(m["lag_mb"])
        row = [
            name,
            m["host"],
            ROLE_LABELS.get(m["role"], m["role"]),
            m["state"],
            str(m["timeline"]) if m["timeline"] else "",
            lag,
        ]
        if extended:
            row += ["*" if m["pending_restart"] else "", _tags_text(m["tags"])]
        rows.append(row)
    return rows


def render_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    right: Sequence[str] = (),
) -> str:
    """A patronictl-style ASCII table; ``title`` is embedded in the top border."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    head = f"+ {title} " if title else ""
    total = sum(w + 3 for w in widths) + 1
    if head and len(head) + 1 > total:
        widths[-1] += len(head) + 1 - total

    def border() -> str:
        return "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.rjust(widths[i]) if columns[i] in right else cell.ljust(widths[i])
            out.append(f" {text} ")
        return "|" + "|".join(out) + "|"

    sep = border()
    top = head + sep[len(head) :] if head else sep
    if head and not top.endswith("+"):
        top = top[:-1] + "+"
    lines = [top, line(columns), sep]
    lines += [line(r) for r in rows]
    lines.append(sep)
    return "\n".join(lines)


def render_cluster(doc: Mapping[str, Any], *, topology: bool, extended: bool = False) -> str:
    """The table output of ``list`` / ``topology`` with its header and footer."""
    title = f"Cluster: {doc['cluster']} ({doc['system_id'] or 'uninitialized'})"
    columns = list(LIST_COLUMNS) + (list(EXTENDED_COLUMNS) if extended else [])
    text = render_table(
        columns,
        table_rows(doc, topology=topology, extended=extended),
        title=title,
        right=("TL", "Lag in MB"),
    )
    footer = []
    if doc["pause"]:
        footer.append(" Maintenance mode: on")
    sw = doc.get("scheduled_switchover")
    if sw:
        footer.append(f" Switchover scheduled at: {sw['at']} from: {sw['from'] or '-'} to: {sw['to'] or 'any'}")
    for bad in doc.get("corrupt_keys") or ():
        footer.append(f" CORRUPT DCS KEY {bad['key']}: {bad['reason']}")
    return "\n".join([text, *footer])


def history_docs(view: ClusterView) -> list[dict[str, Any]]:
    entries = view.history.entries if view.history else ()
    return [
        {
            "timeline": e.timeline,
            "lsn": e.lsn,
            "lsn_text": format_lsn(e.lsn) if 0 <= e.lsn < 1 << 64 else str(e.lsn),
            "reason": e.reason,
            "timestamp": e.timestamp,
            "new_leader": e.new_leader,
        }
        for e in entries
    ]


def history_rows(docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[str(d["timeline"]), d["lsn_text"], d["reason"], d["timestamp"], d["new_leader"]] for d in docs]


# =============================================================================================
# Pure functions: configuration edits


def parse_scalar(text: str) -> Any:
    """A YAML scalar (``10`` -> 10, ``true`` -> True, ``null`` -> None, ``'10'`` -> "10")."""
    try:
        return load_yaml(text, "value") if text.strip() else ""
    except YamlError:
        return text


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CliError(f"{option} {text!r}: expected KEY=VALUE")
    return key, value


def parse_pg_value(text: str) -> Any:
    """A PostgreSQL parameter value: YAML scalar, but ``on``/``off``/``yes``... stay strings
    (PostgreSQL spells booleans itself; YAML 1.1 would turn ``on`` into true)."""
    value = parse_scalar(text)
    if isinstance(value, bool):
        return text.strip()
    return value


def path_patch(path: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", 1`` -> ``{"a": {"b": {"c": 1}}}``."""
    parts = [p for p in path.split(".")]
    if any(not p for p in parts):
        raise CliError(f"-s {path}=...: empty component in the key path")
    doc: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        doc = {part: doc}
    return doc


def build_new_config(
    current: Mapping[str, Any],
    *,
    sets: Sequence[str] = (),
    params: Sequence[str] = (),
    apply_doc: Mapping[str, Any] | None = None,
    replace_doc: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration after an edit: ``replace_doc`` (whole document) or ``current``, then
    ``apply_doc`` merged in, then each ``-s key.path=value`` and ``-p name=value``."""
    new = plain(replace_doc) if replace_doc is not None else plain(current)
    if apply_doc is not None:
        new = merge_patch(new, apply_doc)
    for item in sets:
        key, raw = parse_assignment(item, "-s")
        new = merge_patch(new, path_patch(key, parse_scalar(raw)))
    for item in params:
        key, raw = parse_assignment(item, "-p")
        value = parse_pg_value(raw)
        new = merge_patch(new, {"postgresql": {"parameters": {key: value}}})
    return new


def validate_dynamic(config: Mapping[str, Any], source: str = "new configuration") -> None:
    """site_agent's validation, as one error line naming the field."""
    try:
        parse_dynamic_config(config, source=source)
    except ConfigError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:]) if len(lines) > 1 else lines[0] if lines else str(exc)
        raise CliError(f"invalid configuration, not written: {one_line(detail)}") from None


def config_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(plain(config), sort_keys=True, default_flow_style=False)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Unified diff of the two configurations' YAML ("" when equal)."""
    return "".join(
        difflib.unified_diff(
            config_yaml(old).splitlines(keepends=True),
            config_yaml(new).splitlines(keepends=True),
            fromfile="before",
            tofile="after",
        )
    )


# =============================================================================================
# Pure functions: choosing members, times


def member_or_fail(view: ClusterView, name: str) -> Member:
    m = view.member(name)
    if m is None:
        names = ", ".join(x.name for x in view.members) or "none"
        raise CliError(f"member {name!r} is not in cluster {view.scope!r} (members: {names})")
    return m


def choose_dsn_member(view: ClusterView, role: str, member: str | None) -> Member:
    """``--member`` wins; ``leader``: the leader key holder; ``replica``: the running replica with
    the least lag (then by name); ``any``: the leader, else any running member."""
    if member:
        return member_or_fail(view, member)
    leader = view.leader_member
    replicas = [m for m in view.members if leader is None or m.name != leader.name]
    running = [m for m in replicas if m.info.state == "running"]

    def by_lag(m: Member) -> tuple[int, str]:
        lag = member_lag(view, m)
        return (lag if lag is not None else 1 << 62, m.name)

    if role in ("leader", "primary"):
        if leader is None:
            raise CliError(f"cluster {view.scope!r} has no leader right now")
        return leader
    if role == "replica":
        if not running:
            raise CliError(f"cluster {view.scope!r} has no running replica")
        return sorted(running, key=by_lag)[0]
    if leader is not None:
        return leader
    if running:
        return sorted(running, key=by_lag)[0]
    raise CliError(f"cluster {view.scope!r} has no running member")


def dsn_of(member: Member) -> str:
    host = ""
    port = ""
    if member.info.conn_url:
        try:
            params = parse_conninfo(member.info.conn_url)
        except ConninfoError:
            params = {}
        host = (params.get("host") or params.get("hostaddr") or "").split(",")[0]
        port = (params.get("port") or "").split(",")[0]
    if not host:
        raise CliError(f"member {member.name!r} publishes no usable conn_url ({member.info.conn_url!r})")
    return make_conninfo(host=host, port=port or None)


def parse_when(text: str, now: datetime) -> datetime | None:
    """``now`` -> None; otherwise ISO 8601 (a naive time is local time), not in the past."""
    if text.strip().lower() == "now":
        return None
    raw = text.strip()
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise CliError(f"cannot parse time {text!r}: use ISO 8601, e.g. 2030-01-31T02:00+00:00, or now") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time zone
    if when < now:
        raise CliError(f"time {text!r} is in the past")
    return when


def split_cluster_args(
    args: Sequence[str], configured_scope: str | None, is_member: Callable[[str], bool]
) -> tuple[str | None, list[str]]:
    """``[CLUSTER] [MEMBER...]``: the first word is the cluster name when no scope is configured,
    when it equals the configured scope, or when it is not a member of the configured cluster."""
    if not args:
        return None, []
    first, rest = args[0], list(args[1:])
    if configured_scope is None or first == configured_scope:
        return first, rest
    if is_member(first):
        return None, [first, *rest]
    return first, rest


# =============================================================================================
# Plumbing


def cluster_verb(func: F) -> F:
    """Target options (-c, --dcs-url, --namespace, --scope) and one-line errors."""
    return target_options(operator_errors(func))


def _base(ctx: click.Context) -> TargetBase:
    return resolve_base(target_settings(ctx))


def open_session(ctx: click.Context, cluster: str | None, base: TargetBase | None = None) -> Session:
    target = resolve_target(base or _base(ctx), cluster)
    session = Session(target, runtime(ctx))
    ctx.call_on_close(session.close)
    return session


def existing_view(session: Session) -> ClusterView:
    view = session.view()
    if not view.members and view.leader is None and view.config is None and not view.initialize:
        t = session.target
        raise CliError(
            f"cluster {t.scope!r} not found: no keys under {t.namespace.rstrip('/')}/{t.scope}/ in the DCS "
            f"({t.hosts_text}); check the cluster name, --scope and --namespace"
        )
    return view


def call_agent(
    session: Session,
    member: Member,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> AgentReply:
    if not member.info.api_url:
        raise CliError(f"member {member.name!r} publishes no api_url: is its agent running?")
    return session.agents.request(method, member.info.api_url, path, body, timeout=timeout)


def refused(verb: str, member: str, reply: AgentReply) -> CliError:
    if reply.status == 401:
        return CliError(
            f"{verb}: the agent of {member} refused the credentials (HTTP 401): set restapi.username/"
            "password in the configuration file (the agents' restapi.authentication)"
        )
    return CliError(f"{verb} refused by {member} (HTTP {reply.status}): {reply.message or 'no reason given'}")


def now_utc() -> datetime:
    return datetime.now(UTC)


def cas_config(
    session: Session, build: Callable[[dict[str, Any]], dict[str, Any]], attempts: int = 3
) -> dict[str, Any]:
    """Read the config key, build the new one, write it with CAS; retry on a concurrent change."""
    dcs: ClusterStore = session.dcs
    for _ in range(attempts):
        view = existing_view(session)
        if view.config is None:
            raise CliError(f"cluster {view.scope!r} has no dynamic configuration in the DCS yet")
        new = build(plain(view.config.data))
        try:
            if dcs.set_config(new, view.config.version):
                return new
        except DCSError as exc:
            raise session.dcs_failure(exc, "write the configuration of") from None
    raise CliError("the configuration kept changing while being written: retry")


# =============================================================================================
# Commands

format_option = click.option("--format", "fmt", type=FORMATS, default="table", show_default=True, help="Output format.")
force_option = click.option("--force", is_flag=True, help="Do not ask for confirmation.")


def _show_cluster(
    ctx: click.Context, cluster: str | None, fmt: str, topology: bool, extended: bool, watch: float | None
) -> None:
    session = open_session(ctx, cluster)
    rt = session.rt
    while True:
        if watch is not None:
            click.clear()
            click.echo(time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        try:
            view = existing_view(session)
        except CliError as exc:
            if watch is None:
                raise
            click.echo(f"error: {exc}", err=True)
        else:
            doc = cluster_doc(view, topology=topology)
            if fmt == "table":
                click.echo(render_cluster(doc, topology=topology, extended=extended))
            else:
                emit_structured(doc, fmt)
        if watch is None:
            return
        try:
            rt.sleep(watch)
        except KeyboardInterrupt:
            return


def _watch_options(func: F) -> F:
    func = click.option(
        "-w",
        "--watch",
        "watch",
        type=click.FloatRange(min=0.5),
        default=None,
        help="Refresh every N seconds.",
    )(func)
    func = click.option("-W", "watch_default", is_flag=True, help="Refresh every 2 seconds.")(func)
    func = click.option("-e", "--extended", is_flag=True, help="Add Pending restart and Tags columns.")(func)
    return func


@click.command("list")
@click.argument("cluster", required=False)
@format_option
@_watch_options
@cluster_verb
def list_cmd(cluster: str | None, fmt: str, extended: bool, watch_default: bool, watch: float | None) -> None:
    """The members of CLUSTER: Member, Host, Role, State, TL, Lag in MB."""
    interval = watch if watch is not None else (2.0 if watch_default else None)
    try:
        _show_cluster(click.get_current_context(), cluster, fmt, False, extended, interval)
    except KeyboardInterrupt:
        if interval is None:
            raise


@click.command("topology")
@click.argument("cluster", required=False)
@format_option
@_watch_options
@cluster_verb
def topology_cmd(cluster: str | None, fmt: str, extended: bool, watch_default: bool, watch: float | None) -> None:
    """The members of CLUSTER as a replication tree (cascading replicas under their upstream)."""
    interval = watch if watch is not None else (2.0 if watch_default else None)
    try:
        _show_cluster(click.get_current_context(), cluster, fmt, True, extended, interval)
    except KeyboardInterrupt:
        if interval is None:
            raise


@click.command("switchover")
@click.argument("cluster", required=False)
@click.option("--leader", "--primary", "leader", default=None, help="The current leader (checked).")
@click.option("--candidate", default=None, help="The member to promote (default: the leader picks).")
@click.option("--scheduled", default="now", show_default=True, help="ISO 8601 time, or now.")
@force_option
@cluster_verb
def switchover_cmd(cluster: str | None, leader: str | None, candidate: str | None, scheduled: str, force: bool) -> None:
    """Planned handover: the leader demotes itself and CANDIDATE (or the best replica) promotes."""
    ctx = click.get_current_context()
    session = open_session(ctx, cluster)
    view = existing_view(session)
    if view.leader is None:
        raise CliError(f"cluster {view.scope!r} has no leader: use `drctl failover --candidate NAME`")
    current = view.leader.name
    if leader and leader != current:
        raise CliError(f"member {leader!r} is not the leader of cluster {view.scope!r} (the leader is {current})")
    if candidate:
        member_or_fail(view, candidate)
        if candidate == current:
            raise CliError(f"candidate {candidate!r} is already the leader")
    elif not [m for m in view.members if m.name != current]:
        raise CliError(f"cluster {view.scope!r} has no other member to switch over to")
    when = parse_when(scheduled, now_utc())
    leader_member = member_or_fail(view, current)
    if not force:
        click.echo(render_cluster(cluster_doc(view), topology=False))
        click.echo(f"Switchover of cluster {view.scope}")
        click.echo(f"  current leader: {current}")
        click.echo(f"  candidate:      {candidate or '(chosen by the leader: the best eligible replica)'}")
        click.echo(f"  when:           {when.isoformat() if when else 'now'}")
        click.confirm(
            f"Are you sure you want to switchover cluster {view.scope}, demoting current leader {current}?",
            abort=True,
        )
    body: dict[str, Any] = {"leader": current}
    if candidate:
        body["candidate"] = candidate
    if when is not None:
        body["scheduled_at"] = when.isoformat()
    reply = call_agent(session, leader_member, "POST", "/switchover", body, timeout=SWITCHOVER_TIMEOUT_S)
    if not reply.ok:
        raise refused("switchover", current, reply)
    click.echo(reply.message)


@click.command("failover")
@click.argument("cluster", required=False)
@click.option("--candidate", required=True, help="The member to promote.")
@click.option("--leader", "--primary", "leader", default=None, hidden=True)
@force_option
@cluster_verb
def failover_cmd(cluster: str | None, candidate: str, leader: str | None, force: bool) -> None:
    """Promote CANDIDATE now, whether or not the cluster has a healthy leader."""
    ctx = click.get_current_context()
    session = open_session(ctx, cluster)
    view = existing_view(session)
    cand = member_or_fail(view, candidate)
    current = view.leader.name if view.leader else None
    if leader and leader != current:
        raise CliError(f"member {leader!r} is not the leader of cluster {view.scope!r} (leader: {current})")
    if candidate == current:
        raise CliError(f"candidate {candidate!r} is already the leader")
    if not force:
        click.echo(render_cluster(cluster_doc(view), topology=False))
        what = f"demoting current leader {current}" if current else "the cluster has no leader"
        click.confirm(f"Are you sure you want to failover cluster {view.scope} to {candidate} ({what})?", abort=True)
    # Ask the leader when there is one (it coordinates the handover), else the candidate itself.
    targets: list[Member] = []
    lm = view.leader_member
    if lm is not None and lm.info.api_url:
        targets.append(lm)
    targets.append(cand)
    last_error: AgentUnreachable | None = None
    for target in targets:
        try:
            reply = call_agent(session, target, "POST", "/failover", {"candidate": candidate}, SWITCHOVER_TIMEOUT_S)
        except AgentUnreachable as exc:
            last_error = exc
            continue
        if not reply.ok:
            raise refused("failover", target.name, reply)
        click.echo(reply.message)
        return
    assert last_error is not None
    raise CliError(f"failover: {last_error}")


@click.command("restart")
@click.argument("names", nargs=-1, metavar="[CLUSTER] [MEMBER]...")
@click.option(
    "--role",
    type=click.Choice(["leader", "primary", "standby-leader", "replica", "any"]),
    default="any",
    show_default=True,
    help="Restart only members with this role.",
)
@click.option("--pending", is_flag=True, help="Restart only members whose PostgreSQL needs a restart.")
@click.option("--scheduled", default=None, help="ISO 8601 time for the restart (default: now).")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Seconds to wait for each restart.")
@force_option
@cluster_verb
def restart_cmd(
    names: tuple[str, ...],
    role: str,
    pending: bool,
    scheduled: str | None,
    timeout: float | None,
    force: bool,
) -> None:
    """Restart PostgreSQL on the MEMBERs of CLUSTER (all members when none is named)."""
    ctx = click.get_current_context()
    session, view, members = _cluster_and_members(ctx, names)
    chosen = members or [m.name for m in view.members]
    picked = [member_or_fail(view, n) for n in chosen]
    if role != "any":
        wanted = {
            "leader": {"leader", "standby_leader"},
            "primary": {"leader"},
            "standby-leader": {"standby_leader"},
        }
        keep = wanted.get(role, {"replica", "sync_standby"})
        picked = [m for m in picked if member_role(view, m) in keep]
    if not picked:
        raise CliError(f"no member of cluster {view.scope!r} matches (role {role})")
    body: dict[str, Any] = {}
    if pending:
        body["restart_pending"] = True
    if scheduled:
        when = parse_when(scheduled, now_utc())
        if when is not None:
            body["schedule"] = when.isoformat()
    if timeout is not None:
        body["timeout"] = timeout
    if not force:
        click.echo(render_cluster(cluster_doc(view), topology=False))
        click.confirm(f"Are you sure you want to restart members {', '.join(m.name for m in picked)}?", abort=True)
    read_timeout = (timeout or 120.0) + 15.0
    failed = 0
    for m in picked:
        try:
            reply = call_agent(session, m, "POST", "/restart", body, timeout=read_timeout)
        except (AgentUnreachable, CliError) as exc:
            click.echo(f"Failed: restart for member {m.name}: {exc}", err=True)
            failed += 1
            continue
        if reply.ok:
            click.echo(f"Success: restart on member {m.name} ({reply.message})")
        elif pending and reply.status == 412:
            click.echo(f"Skipped: member {m.name} ({reply.message})")
        else:
            click.echo(
                f"Failed: restart for member {m.name}, status code={reply.status}, ({reply.message})",
                err=True,
            )
            failed += 1
    if failed:
        raise CliError(f"restart failed on {failed} of {len(picked)} member(s)")


def _cluster_and_members(ctx: click.Context, names: Sequence[str]) -> tuple[Session, ClusterView, list[str]]:
    """Resolve ``[CLUSTER] [MEMBER...]`` (see split_cluster_args) and read the view."""
    base = _base(ctx)
    if not names:
        session = open_session(ctx, None, base)
        return session, existing_view(session), []
    first_view: ClusterView | None = None
    first_session: Session | None = None
    if base.scope is not None and names[0] != base.scope:
        first_session = open_session(ctx, None, base)
        first_view = existing_view(first_session)
    view_for_check = first_view

    def is_member(name: str) -> bool:
        return view_for_check is not None and view_for_check.member(name) is not None

    cluster, members = split_cluster_args(names, base.scope, is_member)
    if cluster is None and first_session is not None and first_view is not None:
        return first_session, first_view, members
    session = open_session(ctx, cluster, base)
    if first_view is None:
        return session, existing_view(session), members
    # The first word was not a member of the configured cluster: try it as a cluster name.
    view = session.view()
    if not view.members and view.leader is None and view.config is None and not view.initialize:
        known = ", ".join(m.name for m in first_view.members) or "none"
        raise CliError(
            f"{names[0]!r} is neither a member of cluster {first_view.scope!r} (members: {known}) "
            "nor a cluster in the DCS"
        )
    return session, view, members


@click.command("reinit")
@click.argument("names", nargs=-1, required=True, metavar="[CLUSTER] MEMBER...")
@click.option("--wait", is_flag=True, help="Wait until each member is running again.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True)
@force_option
@cluster_verb
def reinit_cmd(names: tuple[str, ...], wait: bool, timeout: float, force: bool) -> None:
    """Rebuild the MEMBERs' data directories from the leader / backups (never the leader itself)."""
    ctx = click.get_current_context()
    session, view, members = _cluster_and_members(ctx, names)
    if not members:
        raise CliError("reinit: name the member(s) to reinitialize")
    picked = [member_or_fail(view, n) for n in members]
    for m in picked:
        if view.leader is not None and m.name == view.leader.name:
            raise CliError(f"member {m.name!r} is the leader: switch over first, a leader cannot be reinitialized")
    if not force:
        click.echo(render_cluster(cluster_doc(view), topology=False))
        click.confirm(f"Are you sure you want to reinitialize members {', '.join(m.name for m in picked)}?", abort=True)
    failed = 0
    for m in picked:
        try:
            reply = call_agent(session, m, "POST", "/reinitialize", {"force": force})
        except (AgentUnreachable, CliError) as exc:
            click.echo(f"Failed: reinitialize for member {m.name}: {exc}", err=True)
            failed += 1
            continue
        if reply.ok:
            click.echo(f"Success: reinitialize for member {m.name} ({reply.message})")
        else:
            click.echo(
                f"Failed: reinitialize for member {m.name}, status code={reply.status}, ({reply.message})",
                err=True,
            )
            failed += 1
    if failed:
        raise CliError(f"reinitialize failed on {failed} of {len(picked)} member(s)")
    if wait:
        _wait_running(session, [m.name for m in picked], timeout)


def _wait_running(session: Session, names: Sequence[str], timeout: float) -> None:
    """Wait until each member has left ``running`` (the rebuild started) and is ``running`` again.
    A member never seen leaving ``running`` within 15 s counts as done (a very fast rebuild)."""
    rt = session.rt
    start = rt.monotonic()
    deadline = start + timeout
    left: set[str] = set()
    click.echo("Waiting for " + ", ".join(names) + " to be running again...")
    while True:
        rt.sleep(1.0)
        try:
            view: ClusterView | None = session.view()
        except CliError:
            view = None
        pending = list(names)
        if view is not None:
            pending = []
            for n in names:
                m = view.member(n)
                state = m.info.state if m is not None else "absent"
                if state != "running":
                    left.add(n)
                    pending.append(n)
                elif n not in left and rt.monotonic() - start < min(15.0, timeout):
                    pending.append(n)
            if not pending:
                click.echo("Success: " + ", ".join(names) + " running")
                return
        if rt.monotonic() >= deadline:
            raise CliError(f"not running after {timeout:g}s: {', '.join(pending)}")


@click.command("flush")
@click.argument("names", nargs=-1, required=True, metavar="[CLUSTER] switchover")
@force_option
@cluster_verb
def flush_cmd(names: tuple[str, ...], force: bool) -> None:
    """Cancel a scheduled switchover (DELETE /switchover on the leader, or the DCS key directly)."""
    what = names[-1]
    if what != "switchover":
        raise CliError(f"flush: unknown target {what!r} (only `switchover` can be flushed)")
    if len(names) > 2:
        raise CliError("flush: expected [CLUSTER] switchover")
    ctx = click.get_current_context()
    session = open_session(ctx, names[0] if len(names) == 2 else None)
    view = existing_view(session)
    if view.failover is None:
        click.echo("No pending scheduled switchover")
        return
    lm = view.leader_member
    if lm is not None and lm.info.api_url:
        try:
            reply = call_agent(session, lm, "DELETE", "/switchover")
        except AgentUnreachable as exc:
            click.echo(f"warning: {exc}; deleting the failover key in the DCS instead", err=True)
        else:
            if reply.ok:
                click.echo(f"Success: {reply.message}")
                return
            if reply.status not in (502, 503, 504):
                raise refused("flush switchover", lm.name, reply)
            click.echo(f"warning: the leader answered HTTP {reply.status}; deleting the DCS key instead", err=True)
    try:
        ok = session.dcs.delete_failover(view.failover.version)
    except DCSError as exc:
        raise session.dcs_failure(exc, "delete the switchover of") from None
    if not ok:
        raise CliError("the pending switchover changed meanwhile: run flush again")
    click.echo("Success: scheduled switchover deleted")


def _pause_cmd(ctx: click.Context, cluster: str | None, paused: bool, wait: bool, timeout: float) -> None:
    session = open_session(ctx, cluster)
    view = existing_view(session)
    if view.config is None:
        raise CliError(f"cluster {view.scope!r} has no dynamic configuration in the DCS yet")
    if bool(view.config_data.get("pause", False)) == paused:
        raise CliError(f"cluster {view.scope!r} is {'already' if paused else 'not'} paused")

    def build(cur: dict[str, Any]) -> dict[str, Any]:
        cur["pause"] = paused
        return cur

    cas_config(session, build)
    verb = "paused" if paused else "resumed"
    if not wait:
        click.echo(f"Success: cluster management is {verb}")
        return
    click.echo(f"'{'pause' if paused else 'resume'}' request written, waiting for the members to apply it...")
    rt = session.rt
    deadline = rt.monotonic() + timeout
    while True:
        view = session.view()
        lagging = []
        for m in view.members:
            try:
                reply = call_agent(session, m, "GET", "/status", timeout=5.0)
                state = reply.doc.get("pause") if reply.ok and isinstance(reply.doc, dict) else None
            except (AgentUnreachable, CliError):
                state = None
            if state is not paused:
                lagging.append(m.name)
        if not lagging:
            click.echo(f"Success: cluster management is {verb}")
            return
        if rt.monotonic() >= deadline:
            raise CliError(f"written, but not yet applied after {timeout:g}s by: {', '.join(lagging)}")
        rt.sleep(1.0)


@click.command("pause")
@click.argument("cluster", required=False)
@click.option("--wait", is_flag=True, help="Wait until every member reports the pause.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True)
@cluster_verb
def pause_cmd(cluster: str | None, wait: bool, timeout: float) -> None:
    """Maintenance mode: the agents stop acting automatically (no failover, no restarts)."""
    _pause_cmd(click.get_current_context(), cluster, True, wait, timeout)


@click.command("resume")
@click.argument("cluster", required=False)
@click.option("--wait", is_flag=True, help="Wait until every member reports the resume.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True)
@cluster_verb
def resume_cmd(cluster: str | None, wait: bool, timeout: float) -> None:
    """Leave maintenance mode."""
    _pause_cmd(click.get_current_context(), cluster, False, wait, timeout)


@click.command("show-config")
@click.argument("cluster", required=False)
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@cluster_verb
def show_config_cmd(cluster: str | None, fmt: str) -> None:
    """The dynamic configuration (the DCS `config` key)."""
    session = open_session(click.get_current_context(), cluster)
    view = existing_view(session)
    if view.config is None:
        raise CliError(f"cluster {view.scope!r} has no dynamic configuration in the DCS yet")
    data = plain(view.config.data)
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(config_yaml(data).rstrip("\n"))


def _read_yaml_mapping(source: str, option: str) -> dict[str, Any]:
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, "rb") as fh:
                text = decode_utf8(fh.read(), f"{option} {source}")
    except OSError as exc:
        raise CliError(f"{option} {source}: cannot read: {exc.strerror or exc}") from None
    except YamlError as exc:
        raise CliError(str(exc)) from None
    try:
        doc = load_yaml(text, f"{option} {source}")
    except YamlError as exc:
        raise CliError(str(exc)) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise CliError(f"{option} {source}: expected a YAML mapping")
    return doc


@click.command("edit-config")
@click.argument("cluster", required=False)
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY.PATH=VALUE", help="Set a key (YAML value).")
@click.option("-p", "--pg", "params", multiple=True, metavar="NAME=VALUE", help="Set a PostgreSQL parameter.")
@click.option("--apply", "apply_file", default=None, metavar="FILE|-", help="Merge a YAML patch (null deletes).")
@click.option("--replace", "replace_file", default=None, metavar="FILE|-", help="Replace the whole config.")
@click.option("-q", "--quiet", is_flag=True, help="Do not show the diff.")
@force_option
@cluster_verb
def edit_config_cmd(
    cluster: str | None,
    sets: tuple[str, ...],
    params: tuple[str, ...],
    apply_file: str | None,
    replace_file: str | None,
    quiet: bool,
    force: bool,
) -> None:
    """Change the dynamic configuration: validated, shown as a diff, written with compare-and-swap."""
    if not (sets or params or apply_file or replace_file):
        raise CliError("edit-config: nothing to change: give -s KEY=VALUE, -p NAME=VALUE, --apply or --replace")
    if apply_file == "-" and replace_file == "-":
        raise CliError("edit-config: --apply - and --replace - cannot both read stdin")
    apply_doc = _read_yaml_mapping(apply_file, "--apply") if apply_file else None
    replace_doc = _read_yaml_mapping(replace_file, "--replace") if replace_file else None
    session = open_session(click.get_current_context(), cluster)
    view = existing_view(session)
    current = plain(view.config.data) if view.config else {}
    version = view.config.version if view.config else None
    new = build_new_config(current, sets=sets, params=params, apply_doc=apply_doc, replace_doc=replace_doc)
    validate_dynamic(new)
    diff = config_diff(current, new)
    if not diff:
        click.echo("Not changed")
        return
    if not quiet:
        click.echo(diff.rstrip("\n"))
    if not force:
        click.confirm("Apply these changes?", abort=True)
    try:
        ok = session.dcs.set_config(new, version)
    except DCSError as exc:
        raise session.dcs_failure(exc, "write the configuration of") from None
    if not ok:
        raise CliError(f"config changed since read (version {version}): retry (run show-config to see the new one)")
    click.echo("Configuration changed")


@click.command("history")
@click.argument("cluster", required=False)
@format_option
@cluster_verb
def history_cmd(cluster: str | None, fmt: str) -> None:
    """The timeline switches of CLUSTER: TL, LSN, Reason, Timestamp, New Leader."""
    session = open_session(click.get_current_context(), cluster)
    docs = history_docs(existing_view(session))
    if fmt != "table":
        emit_structured(docs, fmt)
        return
    click.echo(render_table(HISTORY_COLUMNS, history_rows(docs), right=("TL",)))


@click.command("dsn")
@click.argument("cluster", required=False)
@click.option(
    "--role",
    type=click.Choice(["leader", "primary", "replica", "any"]),
    default="leader",
    show_default=True,
)
@click.option("--member", default=None, help="This member (overrides --role).")
@cluster_verb
def dsn_cmd(cluster: str | None, role: str, member: str | None) -> None:
    """A libpq connection string (host=... port=...) for the chosen member."""
    session = open_session(click.get_current_context(), cluster)
    view = existing_view(session)
    click.echo(dsn_of(choose_dsn_member(view, role, member)))


COMMANDS: tuple[click.Command, ...] = (
    list_cmd,
    topology_cmd,
    switchover_cmd,
    failover_cmd,
    restart_cmd,
    reinit_cmd,
    flush_cmd,
    pause_cmd,
    resume_cmd,
    show_config_cmd,
    edit_config_cmd,
    history_cmd,
    dsn_cmd,
)
