"""`drctl lab up|status|down`: a local lab of real etcd clusters and PostgreSQL nodes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from drctl.cli.errors import amount_option, operator_errors, path_option, register_operator_error
from drctl.cli.output import emitted, format_option, table
from drctl.lab.cluster import SUPERUSER
from drctl.lab.etcd import LabError
from drctl.lab.lab import Lab
from drctl.lab.labstate import default_lab_dir, pgpass_path, policy_path, topology_path
from drctl.lab.sitebuild import LabLayout
from drctl.pg.osuser import OSUserError

register_operator_error(LabError, OSUserError)

dir_option = path_option(
    "--dir",
    "lab_dir",
    "Lab directory (default: $PGDR_LAB_DIR, else /var/lib/pgdr/lab as root, else the state dir).",
    directory=True,
)


@click.group("lab")
def lab_group() -> None:
    """Run a local lab: per site an etcd cluster and nodes (site-agent + PostgreSQL), all on loopback."""


@lab_group.command("up")
@dir_option
@click.option("--sites", default=2, show_default=True, type=click.IntRange(1, 26))
@click.option(
    "--nodes", default=3, show_default=True, type=click.IntRange(1, 9), help="Nodes (agent + PostgreSQL) per site."
)
@click.option("--etcd-members", default=3, show_default=True, type=click.IntRange(1, 7))
@click.option("--pg-user", default="postgres", show_default=True, help="OS user that runs PostgreSQL.")
@click.option("--independent", is_flag=True, help="Independent clusters: no site is a standby of another.")
@click.option("--tls", is_flag=True, help="Agents' REST APIs over https, with a throwaway CA the lab creates.")
@click.option("--mtls", is_flag=True, help="Like --tls, and the agents require client certificates.")
@click.option("--backup", is_flag=True, help="pgBackRest on the active site (stanza, WAL archive, restore drill).")
@click.option(
    "--witness", is_flag=True, help="Also start a witness (one etcd member) holding the active site and epoch."
)
@click.option(
    "--netns",
    is_flag=True,
    help="Multi-host lab: every node, etcd member, HAProxy and the witness in a network namespace of its own "
    "(root; faults cut links for real). Without TLS, proxies or pgBackRest.",
)
@amount_option("--wan-latency-ms", 10000, "With --netns: one-way latency between sites, through the lab's WAN relay.")
@operator_errors
def lab_up(
    lab_dir: Path | None,
    sites: int,
    nodes: int,
    etcd_members: int,
    pg_user: str,
    independent: bool,
    tls: bool,
    mtls: bool,
    backup: bool,
    witness: bool,
    netns: bool,
    wan_latency_ms: float,
) -> None:
    """Start a lab and leave it running. Site a is active; the other sites are standby clusters of it."""
    if witness and (independent or sites < 2):
        raise click.UsageError("--witness needs at least two sites in a DR layout (not --independent)")
    layout = LabLayout(sites, nodes, etcd_members, dr=not independent, witness=witness)
    if netns:
        if tls or mtls or backup:
            raise click.UsageError("--netns runs without --tls, --mtls or --backup (yet)")
        _lab_up_netns(lab_dir, pg_user, layout, wan_latency_ms)
        return
    if wan_latency_ms:
        raise click.UsageError("--wan-latency-ms needs --netns (the loopback lab has no WAN to slow down)")
    lab = Lab(lab_dir or default_lab_dir(), pg_user=pg_user)
    click.echo(f"lab directory: {lab.dir}")
    state = lab.up(layout, tls=tls, mtls=mtls, backup=backup)
    scheme = "https" if state.tls else "http"
    for site in state.sites:
        click.echo(f"site {site.name}: etcd {','.join(site.etcd_endpoints)}")
        for n in site.nodes:
            click.echo(
                f"  {n['name']}: postgresql 127.0.0.1:{n['pg_port']}, agent API {scheme}://127.0.0.1:{n['api_port']}"
            )
    pgpass = pgpass_path(lab.dir)
    for site in state.sites:
        click.echo(
            f"site {site.name} entry points (HAProxy): read-write 127.0.0.1:{site.entry_port} (/primary; "
            f"none on a standby site), read-only 127.0.0.1:{site.entry_ro_port} (/read-only)"
        )
    first = state.sites[0]
    click.echo(f"connect: PGPASSFILE={pgpass} psql -h 127.0.0.1 -p {first.entry_port} -U {SUPERUSER[0]} postgres")
    if state.tls:
        click.echo(f"CA of the agents' certificates: {lab.tls_dir / 'ca.crt'}")
    topo = topology_path(lab.dir)
    if topo.exists():
        click.echo(f"topology file: {topo}  (export PGDR_TOPOLOGY={topo})")
    pol = policy_path(lab.dir)
    if pol.exists():
        click.echo(f"policy file: {pol}  (export PGDR_POLICY={pol})")
    click.echo(f"stop it with: drctl lab down --dir {lab.dir}")


def _lab_up_netns(lab_dir: Path | None, pg_user: str, layout: LabLayout, wan_latency_ms: float) -> None:
    from drctl.lab.netns import NetnsLab

    lab = NetnsLab(lab_dir or default_lab_dir(), pg_user=pg_user)
    click.echo(f"lab directory: {lab.dir}")
    state = lab.up(layout, wan_latency_ms=wan_latency_ms)
    summary = lab.summary()
    hosts = summary["hosts"]
    click.echo(f"network namespaces: {summary['prefix']}-*  (router {summary['router']})")
    for site in state.sites:
        click.echo(f"site {site.name}: etcd {','.join(site.etcd_endpoints)}")
        for n in site.nodes:
            click.echo(
                f"  {n['name']}: postgresql {n['host']}:{n['pg_port']}, "
                f"agent API http://{n['host']}:8008  (netns {n['ns']})"
            )
        hap = hosts[f"{site.name}-hap"]
        click.echo(f"  entry point (HAProxy, /primary): {hap['addr']}:{site.entry_port}  (netns {hap['ns']})")
        cli = hosts[f"{site.name}-cli"]
        click.echo(f"  client host: netns {cli['ns']} ({cli['addr']})")
    click.echo(
        f"operators' host: netns {hosts['ops']['ns']}  (run drctl there: ip netns exec {hosts['ops']['ns']} ...)"
    )
    if wan_latency_ms:
        click.echo(f"WAN: {wan_latency_ms:g} ms one way between sites (userspace relay in the router namespace)")
    topo = topology_path(lab.dir)
    if topo.exists():
        click.echo(f"topology file: {topo}  (export PGDR_TOPOLOGY={topo})")
    click.echo(f"stop it with: drctl lab down --dir {lab.dir}")


@lab_group.command("status")
@dir_option
@format_option
@operator_errors
def lab_status(lab_dir: Path | None, fmt: str) -> None:
    """Every process of the lab with its role, port, PID and health."""
    from drctl.lab.fabric import Fabric
    from drctl.lab.netns import netns_status

    lab_dir = lab_dir or default_lab_dir()
    if Fabric.load(lab_dir) is not None:
        ns_status = netns_status(lab_dir)
        if emitted(ns_status, fmt):
            return
        ns_rows = [
            (p["site"], p["name"], p["role"], p["host"], p["pid"], "yes" if p["alive"] else "no", p["health"])
            for p in ns_status["processes"]
        ]
        table(f"netns lab {lab_dir}", ["Site", "Process", "Role", "Host", "PID", "Alive", "Health"], ns_rows)
        return
    status = Lab(lab_dir).status()
    if emitted(status, fmt):
        return
    procs = status["processes"]
    if not any(p["alive"] for p in procs):
        # Nothing runs: say so plainly (and exit 3, as `systemctl status` does for a stopped unit).
        click.echo(
            f"lab {status['dir']}: stopped (no process running). Start a new one with `drctl lab up`; "
            f"`drctl lab down --purge --dir {status['dir']}` removes its data.",
            err=True,
        )
        raise SystemExit(3)
    rows = [
        (p["site"], p["name"], p["role"], p["port"], p["pid"], "yes" if p["alive"] else "no", p["health"])
        for p in procs
    ]
    table(f"lab {status['dir']}", ["Site", "Process", "Role", "Port", "PID", "Alive", "Health"], rows)
    alive = sum(1 for p in procs if p["alive"])
    click.echo(f"{alive} of {len(procs)} processes running")


def _site_power_command(name: str, help: str, act: Callable[[Lab, str], list[str]], done: str, none: str = "") -> None:
    """``drctl lab NAME SITE``: ``act`` on the site's nodes, then ``site S: <done> <nodes or none>``."""

    @lab_group.command(name, help=help)
    @click.argument("site")
    @dir_option
    @operator_errors
    def command(site: str, lab_dir: Path | None) -> None:
        nodes = act(Lab(lab_dir or default_lab_dir()), site)
        click.echo(f"site {site}: {done} {', '.join(nodes) or none}")


_site_power_command(
    "kill-site",
    "Simulate a site's power loss: kill every node (agent and PostgreSQL); its DCS stays up.",
    Lab.kill_site,
    "killed",
)
_site_power_command(
    "start-site",
    "Power a site back on: start the agents of its nodes that are not running.",
    Lab.start_site,
    "started",
    "nothing (all running)",
)


@lab_group.command("down")
@dir_option
@click.option("--grace", default=15.0, show_default=True, help="Seconds to wait after SIGTERM before SIGKILL.")
@click.option("--purge", is_flag=True, help="Then remove the lab directory (data directories, logs, certificates).")
@operator_errors
def lab_down(lab_dir: Path | None, grace: float, purge: bool) -> None:
    """Stop every process of the lab, by PID, and a netns lab's namespaces (the data stays unless
    --purge)."""
    from drctl.lab.netns import teardown_if_netns

    gone = teardown_if_netns(lab_dir or default_lab_dir(), grace=grace)
    if gone is not None:
        click.echo(
            f"stopped {len(gone['processes'])} processes and deleted {len(gone['namespaces'])} network namespaces "
            f"of the lab in {lab_dir or default_lab_dir()}"
        )
        if purge:
            Lab(lab_dir or default_lab_dir()).purge()
            click.echo(f"removed {lab_dir or default_lab_dir()}")
        return
    lab = Lab(lab_dir or default_lab_dir())
    size = lab.size_bytes() if purge else 0
    stopped = lab.down(grace=grace, purge=purge)
    click.echo(f"stopped {len(stopped)} processes of the lab in {lab.dir}")
    if purge:
        click.echo(f"removed {lab.dir} ({size / 2**20:.0f} MiB)")
    else:
        click.echo(
            f"its data ({lab.size_bytes() / 2**20:.0f} MiB) stays in {lab.dir}: "
            f"`drctl lab down --purge --dir {lab.dir}` removes it"
        )
