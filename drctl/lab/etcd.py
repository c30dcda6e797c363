"""An N-member etcd cluster on 127.0.0.1 with free ports, for labs and tests."""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor

ETCD_BIN = "etcd"


class LabError(Exception):
    """A lab could not be started or stopped; the message says what to do."""


@dataclass
class EtcdMember:
    name: str  # process name in the supervisor, e.g. "site-a-etcd1"
    member_name: str  # etcd --name
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    scheme: str = "http"
    host: str = "127.0.0.1"  # its address (in the netns lab, its own host's)

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"


@dataclass(frozen=True)
class EtcdTls:
    """A TLS etcd in the lab: certificates of the lab's CA, client certificates required (on the
    client and the peer ports)."""

    ca: Path  # CA certificate
    cert: Path  # member certificate (server and peer)
    key: Path
    client_cert: Path  # what clients present (agents, drctl, the harness)
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def etcd_health(url: str, timeout: float = 1.0, context: ssl.SSLContext | None = None) -> bool:
    """True when the member answers /health with health=true (it has a leader and quorum)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout, context=context) as resp:
            doc = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return str(doc.get("health")) == "true"


class EtcdCluster:
    def __init__(
        self, sup: Supervisor, base_dir: Path, name: str = "etcd", size: int = 3, tls: EtcdTls | None = None
    ) -> None:
        if size < 1:
            raise LabError("an etcd cluster needs at least one member")
        self.sup = sup
        self.base_dir = Path(base_dir)
        self.name = name
        self.size = size
        self.tls = tls
        self.token = f"{name}-{uuid.uuid4().hex[:8]}"
        self.members: list[EtcdMember] = []
        self.root_password: str | None = None  # set by enable_auth()

    def _health(self, url: str, timeout: float) -> bool:
        return etcd_health(url, timeout, self.tls.client_context() if self.tls else None)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _plan(self) -> None:
        self.members = []
        for i in range(1, self.size + 1):
            member_name = f"{self.name}{i}"
            self.members.append(
                EtcdMember(
                    name=member_name,
                    member_name=member_name,
                    client_port=free_port(),
                    peer_port=free_port(),
                    data_dir=self.base_dir / member_name,
                    log=self.base_dir / f"{member_name}.log",
                    scheme="https" if self.tls else "http",
                )
            )

    def _argv(self, m: EtcdMember, state: str) -> list[str]:
        initial = ",".join(f"{x.member_name}={x.peer_url}" for x in self.members)
        return [
            ETCD_BIN,
            "--name",
            m.member_name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            m.client_url,
            "--advertise-client-urls",
            m.client_url,
            "--listen-peer-urls",
            m.peer_url,
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            # Small, fast timings on loopback; a lab should notice a dead member quickly.
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--snapshot-count",
            "10000",
            "--quota-backend-bytes",
            str(256 * 1024 * 1024),
            # Lab only: the cheapest password hash, so that authenticating many clients at once
            # (the contract suite's ten contenders) does not queue behind bcrypt.
            "--bcrypt-cost",
            "4",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *self._tls_args(),
        ]

    def _tls_args(self) -> list[str]:
        t = self.tls
        if t is None:
            return []
        return [
            "--cert-file", str(t.cert), "--key-file", str(t.key),
            "--trusted-ca-file", str(t.ca), "--client-cert-auth",
            "--peer-cert-file", str(t.cert), "--peer-key-file", str(t.key),
            "--peer-trusted-ca-file", str(t.ca), "--peer-client-cert-auth",
        ]  # fmt: skip

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        """Run etcdctl against the cluster (TLS and root credentials as configured)."""
        argv = ["etcdctl", "--endpoints", ",".join(self.endpoints), "--dial-timeout", "5s"]
        if self.tls is not None:
            t = self.tls
            argv += ["--cacert", str(t.ca), "--cert", str(t.client_cert), "--key", str(t.client_key)]
        if user is not None:
            argv += ["--user", user]
        proc = subprocess.run(
            [*argv, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        if proc.returncode != 0:
            raise LabError(f"etcdctl {' '.join(args[:2])}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def enable_auth(self, root_password: str) -> None:
        """Turn on etcd authentication: a root user (root role), then auth enable."""
        self.etcdctl("user", "add", f"root:{root_password}")
        self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("auth", "enable")
        self.root_password = root_password

    def add_prefix_user(self, user: str, password: str, prefix: str) -> None:
        """A least-privilege user: read-write on ``prefix`` (a cluster's keys) and nothing else."""
        root = f"root:{self.root_password}" if self.root_password else None
        role = f"{user}-rw"
        self.etcdctl("role", "add", role, user=root)
        self.etcdctl("role", "grant-permission", role, "--prefix=true", "readwrite", prefix, user=root)
        self.etcdctl("user", "add", f"{user}:{password}", user=root)
        self.etcdctl("user", "grant-role", user, role, user=root)

    def _spawn(self, m: EtcdMember, state: str) -> None:
        m.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if state == "new" and m.data_dir.exists():
            shutil.rmtree(m.data_dir)
        m.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.sup.spawn(
            m.name,
            self._argv(m, state),
            role="etcd",
            log=m.log,
            port=m.client_port,
            extra={"cluster": self.name, "peer_port": m.peer_port, "url": m.client_url},
        )

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        if shutil.which(ETCD_BIN) is None:
            raise LabError("etcd is not installed: run scripts/setup (apt-get install etcd-server)")
        for attempt in range(2):
            self._plan()
            for m in self.members:
                self._spawn(m, "new")
            try:
                self.wait_healthy(timeout)
                return self
            except LabError:
                # A port taken between probing and binding is the usual cause: retry once.
                self.stop(grace=3.0)
                if attempt == 1:
                    raise
        return self

    def wait_healthy(self, timeout: float = 30.0, members: list[EtcdMember] | None = None) -> None:
        deadline = time.monotonic() + timeout
        targets = members if members is not None else self.members
        while time.monotonic() < deadline:
            if all(self._health(m.client_url, timeout=0.5) for m in targets):
                return
            for m in targets:
                rec = self.sup.record(m.name)
                if rec is None or not rec.alive():
                    raise LabError(f"etcd member {m.name} exited during start-up: see {m.log}")
            time.sleep(0.1)
        raise LabError(f"etcd cluster {self.name} not healthy after {timeout:.0f}s: see {self.base_dir}/*.log")

    def healthy_members(self) -> list[EtcdMember]:
        return [m for m in self.members if self._health(m.client_url, timeout=0.5)]

    # --- faults ----------------------------------------------------------------------------------
    def member(self, index: int) -> EtcdMember:
        return self.members[index]

    def kill_member(self, index: int) -> None:
        self.sup.kill(self.members[index].name)

    def pause_member(self, index: int) -> None:
        self.sup.pause(self.members[index].name)

    def resume_member(self, index: int) -> None:
        self.sup.resume(self.members[index].name)

    def restart_member(self, index: int, timeout: float = 30.0) -> None:
        """Start a stopped member again on its data dir (rejoins the existing cluster)."""
        m = self.members[index]
        self.sup.stop(m.name, grace=10.0)
        self._spawn(m, "existing")
        self.wait_healthy(timeout, members=[m])

    def pause_all(self) -> None:
        for m in self.members:
            self.sup.send_signal(m.name, signal.SIGSTOP)

    def resume_all(self) -> None:
        for m in self.members:
            self.sup.send_signal(m.name, signal.SIGCONT)

    def stop(self, grace: float = 15.0) -> None:
        recs = [r for r in (self.sup.record(m.name) for m in self.members) if r is not None]
        self.sup.stop_records(recs, signal.SIGTERM, grace)
        for m in self.members:
            self.sup.forget(m.name)
