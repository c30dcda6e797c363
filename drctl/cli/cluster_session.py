"""What every cluster verb shares: the target and session, the agent calls, choosing members,
reading times, and the common options."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from drctl.agentapi.client import AgentReply, AgentUnreachable
from drctl.cli.context import (
    CliError,
    ClusterStore,
    Session,
    TargetBase,
    resolve_base,
    resolve_target,
    runtime,
    target_options,
    target_settings,
)
from drctl.cli.errors import operator_errors, register_operator_error
from drctl.common.members import member_lag
from drctl.common.mergepatch import plain
from drctl.dcs.base import ClusterView, DCSError, Member
from drctl.pg.conninfo import ConninfoError, make_conninfo, parse_conninfo

register_operator_error(CliError)
register_operator_error(AgentUnreachable)
register_operator_error(DCSError)

F = TypeVar("F", bound=Callable[..., Any])


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


def cluster_verb(func: F) -> F:
    """Target options (-c, --dcs-url, --namespace, --scope) and one-line errors."""
    return target_options(operator_errors(func))


def target_base(ctx: click.Context) -> TargetBase:
    return resolve_base(target_settings(ctx))


def open_session(ctx: click.Context, cluster: str | None, base: TargetBase | None = None) -> Session:
    target = resolve_target(base or target_base(ctx), cluster)
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


force_option = click.option("--force", is_flag=True, help="Do not ask for confirmation.")
