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

What ``list`` and ``topology`` print, tables and documents: drctl.cli.cluster_view. Verbs that
act on members through their agents: drctl.cli.member_cmd.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from drctl.agentapi.client import AgentUnreachable
from drctl.cli.cluster_session import (
    F,
    call_agent,
    cas_config,
    choose_dsn_member,
    cluster_verb,
    dsn_of,
    existing_view,
    force_option,
    open_session,
)
from drctl.cli.cluster_view import (
    HISTORY_COLUMNS,
    cluster_doc,
    history_docs,
    history_rows,
    render_cluster,
    render_table,
)
from drctl.cli.config_edit import (
    build_new_config,
    config_diff,
    config_yaml,
    read_yaml_mapping,
    validate_dynamic,
)
from drctl.cli.context import (
    CliError,
)
from drctl.cli.dsn_sites import SESSION_ATTRS, sites_uri
from drctl.cli.member_cmd import COMMANDS as MEMBER_COMMANDS
from drctl.cli.output import emit_structured, emitted, format_option
from drctl.cli.sites_cmd import topology_option
from drctl.common.mergepatch import plain
from drctl.dcs.base import DCSError


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


def _show_command(name: str, topology: bool, doc: str) -> click.Command:
    """``list`` and ``topology``: the same options, the same view, table or tree."""

    @click.command(name, help=doc)
    @click.argument("cluster", required=False)
    @format_option
    @_watch_options
    @cluster_verb
    def command(cluster: str | None, fmt: str, extended: bool, watch_default: bool, watch: float | None) -> None:
        interval = watch if watch is not None else (2.0 if watch_default else None)
        try:
            _show_cluster(click.get_current_context(), cluster, fmt, topology, extended, interval)
        except KeyboardInterrupt:
            if interval is None:
                raise

    return command


list_cmd = _show_command("list", False, "The members of CLUSTER: Member, Host, Role, State, TL, Lag in MB.")
topology_cmd = _show_command(
    "topology", True, "The members of CLUSTER as a replication tree (cascading replicas under their upstream)."
)


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


def _pause_command(name: str, paused: bool, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("cluster", required=False)
    @click.option("--wait", is_flag=True, help=f"Wait until every member reports the {name}.")
    @click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True)
    @cluster_verb
    def command(cluster: str | None, wait: bool, timeout: float) -> None:
        _pause_cmd(click.get_current_context(), cluster, paused, wait, timeout)

    return command


pause_cmd = _pause_command(
    "pause", True, "Maintenance mode: the agents stop acting automatically (no failover, no restarts)."
)
resume_cmd = _pause_command("resume", False, "Leave maintenance mode.")


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
    apply_doc = read_yaml_mapping(apply_file, "--apply") if apply_file else None
    replace_doc = read_yaml_mapping(replace_file, "--replace") if replace_file else None
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
    if emitted(docs, fmt):
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
@click.option(
    "--all-sites",
    is_flag=True,
    help="A multi-host URI over every site of the topology (--topology or $PGDR_TOPOLOGY) with "
    "target_session_attrs: libpq finds the writable primary wherever it is.",
)
@click.option("--read-only", is_flag=True, help="With --all-sites: target_session_attrs=prefer-standby.")
@click.option(
    "--target-session-attrs",
    "attrs",
    type=click.Choice(SESSION_ATTRS),
    default=None,
    help="With --all-sites: libpq's target_session_attrs (default read-write; prefer-standby with --read-only).",
)
@click.option("--entry-points", is_flag=True, help="With --all-sites: the sites' entry points only, no DCS read.")
@click.option("--dbname", default="postgres", show_default=True, help="With --all-sites: the database.")
@click.option("--user", default=None, help="With --all-sites: the user name in the URI.")
@topology_option
@cluster_verb
def dsn_cmd(
    cluster: str | None,
    role: str,
    member: str | None,
    all_sites: bool,
    read_only: bool,
    attrs: str | None,
    entry_points: bool,
    dbname: str,
    user: str | None,
    topology_path: Path | None,
) -> None:
    """A libpq connection string (host=... port=...) for the chosen member; with --all-sites a
    multi-host URI across every site."""
    if all_sites:
        if attrs is not None and read_only and attrs != "prefer-standby":
            raise CliError("--read-only means target_session_attrs=prefer-standby: give one or the other")
        chosen = attrs or ("prefer-standby" if read_only else "read-write")
        click.echo(sites_uri(topology_path, chosen, dbname, user, entry_points))
        return
    if read_only or attrs or entry_points or user:
        raise CliError("--read-only, --target-session-attrs, --entry-points and --user go with --all-sites")
    session = open_session(click.get_current_context(), cluster)
    view = existing_view(session)
    click.echo(dsn_of(choose_dsn_member(view, role, member)))


COMMANDS: tuple[click.Command, ...] = (
    list_cmd,
    topology_cmd,
    *MEMBER_COMMANDS,
    pause_cmd,
    resume_cmd,
    show_config_cmd,
    edit_config_cmd,
    history_cmd,
    dsn_cmd,
)
