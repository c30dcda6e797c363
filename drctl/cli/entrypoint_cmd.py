"""`drctl entrypoint haproxy|pgbouncer|watch`: client routing for one site, from the topology file
and the site's DCS. Rendered configurations go to stdout or --output (written atomically)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click
from click.decorators import FC

from drctl.cli.errors import amount_option, operator_errors, path_option, register_operator_error
from drctl.cli.sites_cmd import _topology, topology_option
from drctl.dcs.base import ClusterView, DCSError
from drctl.entrypoint import haproxy, pgbouncer
from drctl.entrypoint.members import Backend, BackendError, backends, unroutable
from drctl.entrypoint.watch import EntrypointError, Watcher, WatchTargets
from drctl.safefs import write_atomic
from drctl.sites.controller import SiteClient

register_operator_error(EntrypointError)
register_operator_error(BackendError)

site_option = click.option("--site", required=True, help="Site whose members the entry point routes to.")
output_option = click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here (default: stdout)."
)


def _grouped(
    options: list[Callable[[FC], FC]], build: Callable[..., object], into: str, names: tuple[str, ...]
) -> Callable[[FC], FC]:
    """A shared option group: the command gets one ``into`` object, ``build(site, **values)``."""

    def decorate(f: FC) -> FC:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            kwargs[into] = build(kwargs["site"], **values)
            return f(*args, **kwargs)

        wrapped: Any = command
        for opt in reversed(options):
            wrapped = opt(wrapped)
        return cast(FC, wrapped)

    return decorate


_haproxy_options = _grouped(
    [
        click.option("--bind-rw", default="*:5000", show_default=True, help="Read-write listener (/primary)."),
        click.option("--bind-ro", default="*:5001", show_default=True, help="Read-only listener (/replica)."),
        click.option(
            "--stats-socket",
            default="/run/haproxy/pgdr-admin.sock",
            show_default=True,
            help="HAProxy runtime API socket (what `entrypoint watch --haproxy-socket` talks to).",
        ),
        click.option("--ca-file", default=None, help="CA of the agents' certificates (agents on https)."),
        click.option("--client-pem", default=None, help="Client certificate+key for agents requiring mTLS."),
    ],
    haproxy.HaproxyOptions,
    "haproxy_opts",
    ("bind_rw", "bind_ro", "stats_socket", "ca_file", "client_pem"),
)


def _pgbouncer(
    site: str, databases: tuple[str, ...], listen_port: int, auth_file: str, auth_type: str, settings: tuple[str, ...]
) -> pgbouncer.PgbouncerOptions:
    return pgbouncer.PgbouncerOptions(
        site,
        tuple(databases),
        listen_port=listen_port,
        auth_file=auth_file,
        auth_type=auth_type,
        extra=_settings(settings),
    )


_pgbouncer_options = _grouped(
    [
        click.option("--database", "databases", multiple=True, default=["postgres"], show_default=True),
        click.option("--listen-port", default=6432, show_default=True, type=click.IntRange(1, 65535)),
        click.option("--auth-file", default="/etc/pgbouncer/userlist.txt", show_default=True),
        click.option("--auth-type", default="scram-sha-256", show_default=True),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="KEY=VALUE",
            help="Another [pgbouncer] setting (pidfile, unix_socket_dir, max_client_conn, ...); repeatable.",
        ),
    ],
    _pgbouncer,
    "pgbouncer_opts",
    ("databases", "listen_port", "auth_file", "auth_type", "settings"),
)


def _settings(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--set")
        out[key.strip()] = value.strip()
    return out


def _view(topology_path: Path | None, site: str) -> tuple[SiteClient, ClusterView]:
    topo = _topology(topology_path)
    client = SiteClient(site, topo.site(site))
    dcs = client.dcs()
    try:
        view = dcs.get_cluster()
    except DCSError as exc:
        raise EntrypointError(f"site {site}: its DCS does not answer ({exc}); check the topology's dcs hosts") from exc
    finally:
        dcs.close()
    for problem in unroutable(view):
        click.echo(f"warning: {problem}; left out", err=True)
    return client, view


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomic(output, text, 0o644)
        click.echo(f"wrote {output}", err=True)


@click.group("entrypoint")
def entrypoint_group() -> None:
    """Client routing: HAProxy and PgBouncer configurations for a site, kept current on role changes."""


def _render_command(
    name: str,
    options: Callable[[Callable[..., Any]], Callable[..., Any]],
    render: Callable[[list[Backend], Any], str],
    doc: str,
) -> None:
    """``drctl entrypoint NAME``: the site's members rendered into one entry point's configuration."""

    @entrypoint_group.command(name, help=doc)
    @site_option
    @topology_option
    @output_option
    @options
    @operator_errors
    def command(site: str, topology_path: Path | None, output: Path | None, **grouped: Any) -> None:
        (opts,) = grouped.values()  # the one options object the option group built
        _, view = _view(topology_path, site)
        _emit(render(backends(view), opts), output)


_render_command(
    "haproxy",
    _haproxy_options,
    haproxy.render,
    "HAProxy configuration: a read-write listener (/primary) and a read-only one (/replica).",
)
_render_command(
    "pgbouncer",
    _pgbouncer_options,
    pgbouncer.render,
    "PgBouncer configuration: each database to the site's leader, `<db>_ro` to a replica.",
)


@entrypoint_group.command("watch")
@site_option
@topology_option
@click.option("--haproxy-socket", default=None, help="HAProxy runtime API socket to push role changes to.")
@path_option("--pgbouncer-config", "pgbouncer_config", "PgBouncer configuration file to re-render on a change.")
@path_option("--pgbouncer-pidfile", "pgbouncer_pidfile", "PgBouncer's PID file: SIGHUP it after re-rendering.")
@click.option("--once", is_flag=True, help="Apply the current state once and exit.")
@amount_option(
    "--wait-primary",
    300,
    "Seconds to wait for the new leader's /primary before announcing it (0: announce when it takes the key).",
)
@_haproxy_options
@_pgbouncer_options
@operator_errors
def watch(
    site: str,
    topology_path: Path | None,
    haproxy_socket: str | None,
    pgbouncer_config: Path | None,
    pgbouncer_pidfile: Path | None,
    once: bool,
    wait_primary: float,
    haproxy_opts: haproxy.HaproxyOptions,
    pgbouncer_opts: pgbouncer.PgbouncerOptions,
) -> None:
    """Follow the site's leader key; on a change, tell HAProxy at once (runtime API) and re-render and
    reload PgBouncer, as soon as the new leader answers /primary."""
    if not haproxy_socket and not pgbouncer_config:
        raise click.UsageError("nothing to keep current: give --haproxy-socket and/or --pgbouncer-config")
    client, _ = _view(topology_path, site)
    targets = WatchTargets(
        haproxy_socket=haproxy_socket,
        haproxy_options=haproxy_opts,
        pgbouncer_config=pgbouncer_config,
        pgbouncer_pidfile=pgbouncer_pidfile,
        pgbouncer_options=pgbouncer_opts,
    )
    dcs = client.dcs()
    try:
        say = lambda m: click.echo(f"site {site}: {m}", err=True)  # noqa: E731
        Watcher(dcs, targets, say=say, promote_wait=wait_primary).run(once=once)
    except KeyboardInterrupt:
        pass
    finally:
        dcs.close()
