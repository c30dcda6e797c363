"""`site-agent CONFIG.yml`: load and check the configuration, connect to the DCS, serve the REST
API and run the agent loop until SIGTERM/SIGINT. Bad input gets one clear line, not a traceback."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, cast

import structlog

from drctl.agentconfig.plain import ConfigError, backend_settings
from drctl.agentconfig.runtime import load_agent_config
from drctl.backup.errors import BackupError
from drctl.common.hostport import split_host_port
from drctl.dcs.base import DCS, ClusterView, DCSError
from drctl.dcs.connect import connect
from drctl.pg.ctl import PgCtlError
from site_agent import peers
from site_agent.agent import VERSION, Agent
from site_agent.api import ApiServer, TlsConfig, start_api
from site_agent.control import Control
from site_agent.fencing import LeaseKeeper, keeper_state_dir
from site_agent.identity import duplicate_name_refusal
from site_agent.logsetup import configure_logging
from site_agent.node import Node
from site_agent.pmwatch import PostmasterWatch
from site_agent.reattach import Reattach
from site_agent.sitewatch import SiteWatch

if TYPE_CHECKING:
    from drctl.agentconfig import AgentConfig, ApiCredentials, ConsulConfig, EtcdConfig

EXIT_CONFIG = 2
EXIT_DCS = 3


def build_dcs(cfg: AgentConfig) -> DCS:
    dyn = cfg.bootstrap.dcs
    kind, section = cfg.dcs_backend
    return connect(
        kind,
        backend_settings(kind, section),
        namespace=cfg.namespace,
        scope=cfg.scope,
        name=cfg.name,
        ttl=dyn.ttl,
        retry_timeout=dyn.retry_timeout,
    )


def _creds(c: ApiCredentials | None) -> tuple[str, str] | None:
    return (c.username, c.password or "") if c is not None else None


def security_warnings(cfg: AgentConfig) -> list[str]:
    """What the agent logs at every start about a configuration that runs without protection."""
    out = []
    rest = cfg.restapi
    host = split_host_port(rest.listen)[0]
    if rest.authentication is None:
        where = "on every interface" if host in ("", "0.0.0.0", "::") else f"on {host}"
        out.append(
            f"REST API mutations are NOT authenticated (restapi.allow_unauthenticated: true), listening {where}: "
            "anyone who reaches the port can switch over, fail over or change archive_command"
        )
    elif not rest.certfile and host not in ("127.0.0.1", "::1", "localhost"):
        out.append("REST API without TLS (restapi.certfile unset): credentials travel in cleartext")
    kind, backend = cfg.dcs_backend  # a model or its plain record (drctl.agentconfig.plain): no isinstance
    etcd, consul = cast("EtcdConfig", backend), cast("ConsulConfig", backend)
    if kind == "etcd3" and etcd.username and any(u.startswith("http://") for u in etcd.urls):
        out.append("etcd password sent over plain http: set etcd3.protocol: https (and cacert)")
    if kind == "consul" and consul.token and consul.scheme == "http":
        out.append("Consul token sent over plain http: set consul.scheme: https")
    return out


def _err(message: str) -> None:
    print(f"site-agent: error: {message}", file=sys.stderr)


class _Refused(Exception):
    """Startup stops here: one line for the operator and the exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def _load(path: str, validate: bool) -> AgentConfig:
    """The checked configuration. The agent that goes on running has it checked by a child
    process and runs on plain records: pydantic never loads into it (drctl.agentconfig.plain);
    ``--validate-config`` exits at once and checks in-process. Same checks, same messages."""
    try:
        if validate:
            from drctl.agentconfig import load_checked

            return load_checked(path)
        return load_agent_config(path)
    except ConfigError as exc:
        raise _Refused(str(exc)) from None


def _connect(cfg: AgentConfig, source: str) -> tuple[DCS, ClusterView]:
    dcs = build_dcs(cfg)
    try:
        return dcs, dcs.get_cluster()
    except DCSError as exc:
        raise _Refused(
            f"cannot reach the DCS at start: {exc}. Check the `etcd3.hosts`/`consul` section "
            f"of {source} and that the DCS is running.",
            EXIT_DCS,
        ) from None


def _build_node(cfg: AgentConfig, source: str) -> Node:
    try:
        node = Node(cfg)
    except (PgCtlError, ValueError) as exc:
        raise _Refused(f"{source}: postgresql: {exc}") from None
    if cfg.postgresql.pgbackrest is not None:
        # Imported here: an agent without pgBackRest never loads its runner and typed info.
        from site_agent.backup import NodeBackup

        try:
            node.backup = NodeBackup(cfg, node, cfg.postgresql.pgbackrest)
            node.backup.prepare()
        except (BackupError, OSError, ValueError) as exc:
            raise _Refused(f"{source}: postgresql.pgbackrest: {exc}") from None
    return node


def _build_agent(cfg: AgentConfig, dcs: DCS, node: Node, view: ClusterView, source: str) -> Agent:
    """The agent with what it runs beside it: cross-site guard, backup schedule, postmaster
    watch, lease keeper."""
    agent = Agent(cfg, dcs, node)
    refusal = duplicate_name_refusal(view, cfg.name, agent.identity, node.conn_url, agent.api_url)
    if refusal is not None:
        raise _Refused(f"{source}: name: {refusal}")
    if cfg.dr is not None:
        # Only with `dr:`: the cross-site code loads here (its topology as records, no pydantic).
        from drctl.sites.topobase import TopologyError
        from site_agent.crosssite import SiteGuard

        try:
            agent.site_guard = SiteGuard.from_config(cfg.dr, cfg.name)
        except TopologyError as exc:
            raise _Refused(f"{source}: dr.topology: {exc}") from None
        agent.site_guard.monitor.start()
    section = cfg.postgresql.pgbackrest
    if section is not None and section.schedule is not None and node.backup is not None:
        from drctl.backup.schedule import BackupScheduler  # only with a schedule: keeps APScheduler out otherwise

        agent.scheduler = BackupScheduler(node.backup.runner, section.schedule, is_leader=agent.is_backup_source)
        agent.scheduler.start()
    agent.pm_watch = PostmasterWatch(agent.request_cycle)
    if cfg.dr is not None:  # the controller's cross-site steps are acted on as they are written
        SiteWatch(build_dcs(cfg), agent.request_cycle, agent.stopping, on_site=Reattach(agent)).start()
    if cfg.watchdog.lease_keeper:
        try:
            state_dir = keeper_state_dir(cfg.watchdog.state_dir, cfg.scope, cfg.name, node.data_dir)
        except OSError as exc:
            raise _Refused(f"{source}: watchdog.state_dir: {exc}") from None
        cb = cfg.postgresql.callbacks
        on_stop = cb.argv("on_stop") if cb is not None else None  # the keeper runs it for a frozen agent
        keeper = LeaseKeeper(node.data_dir, state_dir, on_stop, cb.timeout if cb else 60.0, cfg.scope)
        keeper.start()
        agent.attach_keeper(keeper)
    return agent


def _serve_api(cfg: AgentConfig, agent: Agent) -> ApiServer:
    """The REST API, and how this agent reaches its peers' (same CA and client certificate)."""
    rest = cfg.restapi
    admin, readonly = _creds(rest.authentication), _creds(rest.readonly_authentication)
    peers.configure(
        readonly or admin,
        cafile=rest.cafile,
        certfile=rest.certfile,
        keyfile=rest.keyfile,
        keyfile_password=rest.keyfile_password,
    )
    tls = None
    if rest.certfile:
        tls = TlsConfig(rest.certfile, rest.keyfile, rest.cafile, rest.verify_client, rest.keyfile_password)
    try:
        return start_api(Control(agent), rest.listen, admin, tls, readonly)
    except (OSError, ValueError) as exc:
        raise _Refused(f"cannot serve the REST API on restapi.listen={rest.listen}: {exc}") from None


def _run_until_signalled(agent: Agent, api: ApiServer) -> None:
    log = structlog.get_logger("site_agent")

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received: shutting down", signal=signal.Signals(signum).name)
        agent.stopping.set()
        agent.request_cycle()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loop = threading.Thread(target=agent.run, name="agent-loop", daemon=True)
    loop.start()
    while loop.is_alive():
        loop.join()  # a signal interrupts the wait and runs on_signal (no polling at rest)
    agent.shutdown()
    if agent.site_guard is not None:
        agent.site_guard.monitor.stop()
    api.stop()


def parse_args(argv: list[str]) -> tuple[str, bool]:
    """(configuration file, --validate-config). The way the agent is started, one path, needs no
    argparse (nor gettext, ~0.3 MB of resident memory for as long as it runs): argparse would
    answer exactly that path. Anything else (options, help, a usage error) goes through argparse."""
    if len(argv) == 1 and not argv[0].startswith("-"):
        return argv[0], False
    import argparse

    parser = argparse.ArgumentParser(prog="site-agent", description="pgdr per-node HA agent")
    parser.add_argument("config", help="agent configuration file (YAML)")
    parser.add_argument("--validate-config", action="store_true", help="check the file and exit")
    parser.add_argument("--version", action="version", version=f"site-agent {VERSION}")
    args = parser.parse_args(argv)
    return str(args.config), bool(args.validate_config)


def run(argv: list[str]) -> int:
    config, validate = parse_args(argv)
    try:
        cfg = _load(config, validate)
        if validate:
            print(f"{config}: configuration is valid")
            return 0
        configure_logging(cfg.log.format, cfg.log.level)
        for warning in security_warnings(cfg):
            structlog.get_logger("site_agent").warning(warning)
        dcs, view = _connect(cfg, config)
        node = _build_node(cfg, config)
        agent = _build_agent(cfg, dcs, node, view, config)
        api = _serve_api(cfg, agent)
    except _Refused as exc:
        _err(str(exc))
        return exc.code
    _run_until_signalled(agent, api)
    return 0
