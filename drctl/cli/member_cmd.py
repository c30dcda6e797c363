"""`drctl` verbs that act on members through their agents' REST API: switchover, failover,
restart, reinit, flush (a pending switchover)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from drctl.agentapi.client import AgentReply, AgentUnreachable
from drctl.cli.cluster_session import (
    call_agent,
    cluster_verb,
    existing_view,
    force_option,
    member_or_fail,
    now_utc,
    open_session,
    parse_when,
    refused,
    split_cluster_args,
    target_base,
)
from drctl.cli.cluster_view import (
    cluster_doc,
    render_cluster,
)
from drctl.cli.context import (
    CliError,
    Session,
)
from drctl.common.members import member_role
from drctl.dcs.base import ClusterView, DCSError, Member

SWITCHOVER_TIMEOUT_S = 180.0  # the leader answers a switchover once it is done (or gave up)


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
        if pending and reply.status == 412:
            click.echo(f"Skipped: member {m.name} ({reply.message})")
        elif not _report(reply, f"restart on member {m.name}", f"restart for member {m.name}"):
            failed += 1
    if failed:
        raise CliError(f"restart failed on {failed} of {len(picked)} member(s)")


def _report(reply: AgentReply, success: str, failure: str) -> bool:
    """One line per member, patronictl's wording; True when the agent did it."""
    if reply.ok:
        click.echo(f"Success: {success} ({reply.message})")
        return True
    click.echo(f"Failed: {failure}, status code={reply.status}, ({reply.message})", err=True)
    return False


def _cluster_and_members(ctx: click.Context, names: Sequence[str]) -> tuple[Session, ClusterView, list[str]]:
    """Resolve ``[CLUSTER] [MEMBER...]`` (see split_cluster_args) and read the view."""
    base = target_base(ctx)
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
        if not _report(reply, f"reinitialize for member {m.name}", f"reinitialize for member {m.name}"):
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


COMMANDS: tuple[click.Command, ...] = (switchover_cmd, failover_cmd, restart_cmd, reinit_cmd, flush_cmd)
