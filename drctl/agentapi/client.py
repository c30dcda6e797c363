"""The one HTTP client of the site agents' REST API (urllib3): the `drctl` cluster verbs, the
sites controller and the agents polling their peers all use it (TLS verified, Basic auth,
client certificates, bounded timeouts).

Every call is bounded (connect + read timeouts, no retries: a mutation must not be sent twice),
and every transport problem becomes one :class:`AgentUnreachable` naming the URL, so the CLI can
print it as one line. An HTTP error status is *not* an exception: the caller gets the agent's
status code and message and decides how to present it.
"""

from __future__ import annotations

import abc
import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from drctl.agentapi.status import AgentStatus

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "AgentApi",
    "AgentClient",
    "AgentReply",
    "AgentUnreachable",
    "RestAuth",
    "basic_auth_header",
    "decode_reply",
    "join_url",
]

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0


class AgentUnreachable(Exception):
    """The agent could not be asked (connection refused, timeout, TLS failure...)."""


@dataclass(frozen=True)
class AgentReply:
    status: int
    text: str  # the body as text, stripped
    doc: Any = None  # the decoded JSON body, when the agent answered JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The agent's answer as one line (JSON bodies compacted)."""
        if self.doc is not None and not isinstance(self.doc, str):
            return json.dumps(self.doc, separators=(",", ":"), sort_keys=True, default=str)
        return " ".join(self.text.split())


@dataclass(frozen=True)
class RestAuth:
    """How drctl talks to the agents: Basic credentials (sent with every request), the CA that
    signs the agents' certificates (https is always verified unless ``verify`` is False), and an
    optional client certificate for agents that require one."""

    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    key_password: str | None = None


def join_url(api_url: str, path: str) -> str:
    """The endpoint ``path`` of a member's agent. A member publishes its api_url Patroni-style,
    often with a path (``http://10.0.0.1:8008/status``): only scheme and host:port are kept."""
    parts = urlsplit(api_url.strip())
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}/{path.lstrip('/')}"
    return api_url.rstrip("/") + "/" + path.lstrip("/")


def basic_auth_header(username: str, password: str | None) -> str:
    token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
    return f"Basic {token}"


def decode_reply(status: int, data: bytes, content_type: str | None) -> AgentReply:
    text = data.decode("utf-8", "replace").strip()
    doc: Any = None
    if (content_type or "").startswith("application/json") or text[:1] in ("{", "["):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
    return AgentReply(status, text, doc)


class AgentApi(abc.ABC):
    """The REST boundary the cluster verbs, the sites controller and peer polling use. ``request``
    is written once here; an implementation sends one prepared request (:class:`AgentClient`
    over urllib3; tests substitute a fake transport)."""

    def request(
        self,
        method: str,
        api_url: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float = READ_TIMEOUT_S,
        total: float | None = None,
    ) -> AgentReply:
        """One request. ``timeout`` bounds the connection (at most CONNECT_TIMEOUT_S) and each
        read; ``total``, when given, bounds the whole request (peer polling during an election)."""
        if not api_url:
            raise AgentUnreachable("the member publishes no api_url")
        return self._send(method.upper(), join_url(api_url, path), None if body is None else dict(body), timeout, total)

    @abc.abstractmethod
    def _send(
        self, method: str, url: str, body: dict[str, Any] | None, timeout: float, total: float | None
    ) -> AgentReply: ...

    def status(self, api_url: str, *, timeout: float = CONNECT_TIMEOUT_S, total: float | None = None) -> AgentStatus:
        """GET /status, typed. Raises AgentUnreachable when the agent does not answer 200 with a
        JSON object (refused credentials included: the caller cannot know more)."""
        reply = self.request("GET", api_url, "/status", timeout=timeout, total=total)
        if reply.status != 200 or not isinstance(reply.doc, Mapping):
            raise AgentUnreachable(f"{join_url(api_url, '/status')}: no status document (HTTP {reply.status})")
        return AgentStatus.from_dict(reply.doc)


class AgentClient(AgentApi):
    """urllib3 implementation of :class:`AgentApi`. Requests carry Basic auth when configured."""

    def __init__(self, auth: RestAuth | None = None) -> None:
        self.auth = auth or RestAuth()
        tls: dict[str, Any] = {}
        if self.auth.cafile:
            tls["ca_certs"] = self.auth.cafile
        if self.auth.certfile:
            tls["cert_file"] = self.auth.certfile
            if self.auth.keyfile:
                tls["key_file"] = self.auth.keyfile
            if self.auth.key_password:
                tls["key_password"] = self.auth.key_password
        tls["cert_reqs"] = "CERT_REQUIRED" if self.auth.verify else "CERT_NONE"
        # Imported here: a site agent loads this module for its peers but asks them only during
        # elections and failsafe rounds; an idle agent does not carry urllib3 (~2.5 MB).
        import urllib3

        self._pool: urllib3.PoolManager = urllib3.PoolManager(num_pools=8, maxsize=2, retries=False, **tls)

    def _send(
        self, method: str, url: str, body: dict[str, Any] | None, timeout: float, total: float | None
    ) -> AgentReply:
        headers = {"Accept": "application/json"}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.auth.username:
            # Every request: status endpoints may require (read-only) credentials too.
            headers["Authorization"] = basic_auth_header(self.auth.username, self.auth.password)
        import urllib3
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            resp = self._pool.request(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, timeout), read=timeout, total=total),
                redirect=False,
            )
        except (Urllib3Error, OSError) as exc:
            raise AgentUnreachable(
                f"cannot reach the agent at {url}: {_reason(exc)} (is the site agent running there?)"
            ) from None
        return decode_reply(resp.status, resp.data, resp.headers.get("Content-Type"))

    def close(self) -> None:
        self._pool.clear()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc)
    # urllib3 wraps the OS error in "<urllib3.connection.HTTPConnection object at 0x..>: Failed to ..."
    if ">: " in text:
        text = text.split(">: ", 1)[1]
    return " ".join(text.split()) or type(exc).__name__
