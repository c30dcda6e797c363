"""Asking the other members over REST how far they are (for elections, invariant 3)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3

from drctl.dcs.base import ClusterView
from site_agent.state import PeerStatus

_http = urllib3.PoolManager(num_pools=16, maxsize=4, retries=False)
_read_headers: dict[str, str] = {}


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
    global _http, _read_headers
    tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    if cafile:
        tls["ca_certs"] = cafile
    if certfile:
        tls["cert_file"] = certfile
        tls["key_file"] = keyfile
        tls["key_password"] = keyfile_password
    _http = urllib3.PoolManager(num_pools=16, maxsize=4, retries=False, **tls)
    _read_headers = urllib3.make_headers(basic_auth=f"{read_auth[0]}:{read_auth[1]}") if read_auth else {}


def status_url(api_url: str) -> str:
    base = api_url.rstrip("/")
    for suffix in ("/status", "/patroni"):
        if base.endswith(suffix):
            return base
    return base + "/status"


def parse_peer_status(doc: Mapping[str, Any]) -> PeerStatus:
    xlog = doc.get("xlog") if isinstance(doc.get("xlog"), Mapping) else {}
    assert isinstance(xlog, Mapping)
    positions = [xlog.get(k) for k in ("location", "received_location", "replayed_location")]
    lsns = [p for p in positions if isinstance(p, int) and not isinstance(p, bool)]
    tags = doc.get("tags") if isinstance(doc.get("tags"), Mapping) else {}
    assert isinstance(tags, Mapping)
    role = doc.get("role")
    prio = tags.get("failover_priority", 1)
    return PeerStatus(
        reachable=True,
        lsn=max(lsns) if lsns else None,
        in_recovery=None if role is None else role != "primary",
        timeline=doc.get("timeline") if isinstance(doc.get("timeline"), int) else None,
        nofailover=bool(tags.get("nofailover", False)),
        failover_priority=prio if isinstance(prio, int) else 1,
    )


def fetch_one(api_url: str, timeout: float) -> PeerStatus:
    try:
        resp = _http.request("GET", status_url(api_url), headers=_read_headers, timeout=urllib3.Timeout(total=timeout))
        doc = json.loads(resp.data or b"{}")
    except (urllib3.exceptions.HTTPError, ValueError, OSError):
        return PeerStatus(reachable=False)
    if not isinstance(doc, Mapping):
        return PeerStatus(reachable=False)
    return parse_peer_status(doc)


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
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers.update(urllib3.make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
    data = json.dumps(body).encode()

    def one(url: str) -> bool:
        base = url.rstrip("/")
        for suffix in ("/status", "/patroni"):
            base = base.removesuffix(suffix)
        try:
            resp = _http.request(
                "POST", base + "/failsafe", body=data, headers=headers, timeout=urllib3.Timeout(total=timeout)
            )
        except (urllib3.exceptions.HTTPError, OSError):
            return False
        return resp.status == 200

    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        futures = {name: pool.submit(one, url) for name, url in targets.items()}
        return {name for name, fut in futures.items() if fut.result()}
