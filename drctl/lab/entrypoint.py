"""A site's entry point in the lab: a real HAProxy routing to whichever node answers 200 on the
agents' Patroni-compatible health checks, as production sites do. Applications and the other
site's standby leader connect to it instead of to a node."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from drctl.lab.cluster import LabCluster
from drctl.lab.etcd import LabError
from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor
from drctl.safefs import write_atomic


@dataclass
class EntryPoint:
    sup: Supervisor
    cluster: LabCluster
    port: int = 0  # read-write: the node answering /primary
    ro_port: int = 0  # read-only: any node answering /read-only (the standby site's readers too)

    @property
    def name(self) -> str:
        return f"{self.cluster.site}-haproxy"

    @property
    def config_path(self) -> Path:
        return self.cluster.base_dir / "haproxy.cfg"

    def render(self) -> str:
        check = ""
        ca = self.cluster.tls_ca
        if ca is not None:
            # The agents serve https: check over TLS, verifying their certificates against the CA.
            check = f" check-ssl verify required ca-file {ca / 'ca.crt'}"
            if self.cluster.mtls:
                check += f" crt {self.client_pem()}"
        servers = "\n".join(
            f"  server {n.name} 127.0.0.1:{n.pg_port} check port {n.api_port}{check}" for n in self.cluster.nodes
        )
        return f"""global
  maxconn 256

defaults
  mode tcp
  timeout connect 2s
  timeout client 30m
  timeout server 30m
  timeout check 1s

listen primary
  bind 127.0.0.1:{self.port}
  option httpchk OPTIONS /primary
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
{self._read_only(servers)}"""

    def _read_only(self, servers: str) -> str:
        """The read-only listener, when a port was given to it (the netns lab's entry point has none)."""
        if not self.ro_port:
            return ""
        return f"""
listen read_only
  bind 127.0.0.1:{self.ro_port}
  balance roundrobin
  option httpchk OPTIONS /read-only
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
"""

    def client_pem(self) -> Path:
        """HAProxy wants the client certificate and its key in one file."""
        ca = self.cluster.tls_ca
        assert ca is not None
        pem = self.cluster.base_dir / "haproxy-client.pem"
        write_atomic(pem, (ca / "client.crt").read_bytes() + (ca / "client.key").read_bytes(), 0o600)
        return pem

    def start(self) -> EntryPoint:
        if shutil.which("haproxy") is None:
            raise LabError("haproxy is not installed: run scripts/setup")
        self.port = self.port or free_port()
        self.ro_port = self.ro_port or free_port()
        self.config_path.write_text(self.render())
        self.sup.spawn(
            self.name,
            ["haproxy", "-f", str(self.config_path), "-db"],
            role="haproxy",
            log=self.cluster.base_dir / "haproxy.log",
            port=self.port,
            extra={"site": self.cluster.site},
        )
        return self

    def stop(self) -> None:
        self.sup.stop(self.name, grace=5.0)
