"""`site-agent CONFIG.yml`: load and check the configuration, connect to the DCS, serve the REST
API and run the agent loop until SIGTERM/SIGINT. Bad input gets one clear line, not a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

import structlog

from drctl.backup.errors import BackupError
from drctl.dcs.base import DCS, DCSError
from drctl.dcs.factory import ConsulSettings, DcsSettings, EtcdSettings, get_dcs
from drctl.pg.ctl import PgCtlError
from drctl.sites.topology import TopologyError
from site_agent.agent import VERSION, Agent
from site_agent.api import start_api
from site_agent.backup import NodeBackup
from site_agent.config import AgentConfig, ConfigError, ConsulConfig, EtcdConfig, load_config
from site_agent.control import Control
from site_agent.crosssite import SiteGuard
from site_agent.fencing import LeaseKeeper
from site_agent.logsetup import configure_logging
from site_agent.node import Node
from site_agent.pmwatch import PostmasterWatch

EXIT_CONFIG = 2
EXIT_DCS = 3


def dcs_settings(cfg: AgentConfig) -> DcsSettings:
    kind, section = cfg.dcs_backend
    if kind == "consul":
        assert isinstance(section, ConsulConfig)
        host, _, port = section.host.partition(":")
        return DcsSettings(
            consul=ConsulSettings(
                host=host,
                port=section.port or int(port or 8500),
                scheme=section.scheme,
                token=section.token,
                dc=section.dc,
                cacert=section.cacert,
                cert=section.cert,
                key=section.key,
                verify=section.verify,
            )
        )
    assert isinstance(section, EtcdConfig)
    return DcsSettings(
        etcd=EtcdSettings(
            hosts=list(section.hosts),
            protocol=section.protocol,
            username=section.username,
            password=section.password,
            cacert=section.cacert,
            cert=section.cert,
            key=section.key,
        )
    )


def build_dcs(cfg: AgentConfig) -> DCS:
    dyn = cfg.bootstrap.dcs
    return get_dcs(
        dcs_settings(cfg),
        namespace=cfg.namespace,
        scope=cfg.scope,
        name=cfg.name,
        ttl=dyn.ttl,
        retry_timeout=dyn.retry_timeout,
    )


def _err(message: str) -> None:
    print(f"site-agent: error: {message}", file=sys.stderr)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="site-agent", description="pgdr per-node HA agent")
    parser.add_argument("config", help="agent configuration file (YAML)")
    parser.add_argument("--validate-config", action="store_true", help="check the file and exit")
    parser.add_argument("--version", action="version", version=f"site-agent {VERSION}")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    if args.validate_config:
        print(f"{args.config}: configuration is valid")
        return 0
    configure_logging(cfg.log.format, cfg.log.level)
    log = structlog.get_logger("site_agent")
    dcs = build_dcs(cfg)
    try:
        dcs.get_cluster()
    except DCSError as exc:
        _err(
            f"cannot reach the DCS at start: {exc}. Check the `etcd3.hosts`/`consul` section "
            f"of {args.config} and that the DCS is running."
        )
        return EXIT_DCS
    try:
        node = Node(cfg)
    except (PgCtlError, ValueError) as exc:
        _err(f"{args.config}: postgresql: {exc}")
        return EXIT_CONFIG
    if cfg.postgresql.pgbackrest is not None:
        try:
            node.backup = NodeBackup(cfg, node, cfg.postgresql.pgbackrest)
            node.backup.prepare()
        except (BackupError, OSError, ValueError) as exc:
            _err(f"{args.config}: postgresql.pgbackrest: {exc}")
            return EXIT_CONFIG
    agent = Agent(cfg, dcs, node)
    if cfg.dr is not None:
        try:
            agent.site_guard = SiteGuard.from_config(cfg.dr, cfg.name)
        except TopologyError as exc:
            _err(f"{args.config}: dr.topology: {exc}")
            return EXIT_CONFIG
        agent.site_guard.monitor.start()
    section = cfg.postgresql.pgbackrest
    if section is not None and section.schedule is not None and node.backup is not None:
        from drctl.backup.schedule import BackupScheduler  # only with a schedule: keeps APScheduler out otherwise

        agent.scheduler = BackupScheduler(node.backup.runner, section.schedule, is_leader=agent.is_backup_source)
        agent.scheduler.start()
    agent.pm_watch = PostmasterWatch(agent.request_cycle)
    if cfg.watchdog.lease_keeper:
        keeper = LeaseKeeper(node.data_dir, node.data_dir.parent)
        keeper.start()
        agent.attach_keeper(keeper)
    auth = cfg.restapi.authentication
    try:
        api = start_api(
            Control(agent),
            cfg.restapi.listen,
            (auth.username, auth.password or "") if auth else None,
        )
    except OSError as exc:
        _err(f"cannot listen on restapi.listen={cfg.restapi.listen}: {exc}")
        return EXIT_CONFIG

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received: shutting down", signal=signal.Signals(signum).name)
        agent.stopping.set()
        agent.request_cycle()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loop = threading.Thread(target=agent.run, name="agent-loop", daemon=True)
    loop.start()
    while loop.is_alive():
        loop.join(0.5)
    agent.shutdown()
    if agent.site_guard is not None:
        agent.site_guard.monitor.stop()
    api.stop()
    return 0
