"""Asking the other members over REST how far they are (for elections, invariant 3), and the
leader's failsafe round. Both go through the one agent client (drctl.agentapi.client)."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import structlog

from drctl.agentapi.client import AgentClient, AgentUnreachable, RestAuth
from drctl.agentapi.status import AgentStatus
from drctl.dcs.base import ClusterView
from site_agent.state import PeerStatus

_tls = RestAuth()  # how peers are reached (CA, client certificate); set by configure()
_reader_auth = _tls  # what status requests carry
_reader: AgentClient | None = None  # made at the first request (an idle agent never asks its peers)
_writers: dict[tuple[str | None, str | None], AgentClient] = {}  # by credentials, for POST /failsafe
log = structlog.get_logger("site_agent.peers")


def configure(
    read_auth: tuple[str, str] | None,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    keyfile_password: str | None = None,
) -> None:
    """How this agent reaches its peers' REST APIs: ``read_auth`` sent with status requests
    (peers may require read-only credentials), https verified against ``cafile`` (the system
    store when None), and ``certfile``/``keyfile`` presented as a client certificate."""
    global _tls, _reader, _reader_auth
    _tls = RestAuth(cafile=cafile, certfile=certfile, keyfile=keyfile, key_password=keyfile_password)
    _writers.clear()
    user, password = read_auth if read_auth else (None, None)
    _reader_auth, _reader = replace(_tls, username=user, password=password), None


def _status_client() -> AgentClient:
    global _reader
    client = _reader
    if client is None:  # a race makes two; either works
        client = _reader = AgentClient(_reader_auth)
    return client


def peer_status(status: AgentStatus) -> PeerStatus:
    """What an election needs of a peer's status document."""
    prio = status.tags.get("failover_priority", 1)
    return PeerStatus(
        reachable=True,
        lsn=status.xlog.lsn,
        in_recovery=None if status.role == "unknown" else status.role != "primary",
        timeline=status.timeline or None,
        nofailover=bool(status.tags.get("nofailover", False)),
        failover_priority=prio if isinstance(prio, int) and not isinstance(prio, bool) else 1,
    )


def fetch_one(api_url: str, timeout: float) -> PeerStatus:
    try:
        return peer_status(_status_client().status(api_url, timeout=timeout, total=timeout))
    except AgentUnreachable:
        return PeerStatus(reachable=False)


def gather_peers(view: ClusterView, me: str, timeout: float) -> dict[str, PeerStatus]:
    """GET /status of every other member in parallel; a member that does not answer within
    ``timeout`` is reported unreachable."""
    targets = {m.name: m.info.api_url for m in view.members if m.name != me and m.info.api_url}
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        futures = {name: pool.submit(fetch_one, url, timeout) for name, url in targets.items()}
        return {name: fut.result() for name, fut in futures.items()}


def post_failsafe(
    targets: Mapping[str, str], body: Mapping[str, Any], auth: tuple[str, str] | None, timeout: float
) -> set[str]:
    """POST /failsafe to every member (name -> api_url) in parallel; the names that answered 200."""
    if not targets:
        return set()
    user, password = auth if auth is not None else (None, None)
    client = _writers.get((user, password))
    if client is None:
        client = _writers[(user, password)] = AgentClient(replace(_tls, username=user, password=password))

    def one(url: str) -> bool:
        try:
            return client.request("POST", url, "/failsafe", body, timeout=timeout, total=timeout).status == 200
        except AgentUnreachable:
            return False

    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        futures = {name: pool.submit(one, url) for name, url in targets.items()}
        return {name for name, fut in futures.items() if fut.result()}
