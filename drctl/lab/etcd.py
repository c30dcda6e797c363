"""An N-member etcd cluster on 127.0.0.1 with free ports, for labs and tests."""

from __future__ import annotations

import json
import shutil
import signal
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

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


def etcd_health(url: str, timeout: float = 1.0) -> bool:
    """True when the member answers /health with health=true (it has a leader and quorum)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            doc = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return str(doc.get("health")) == "true"


class EtcdCluster:
    def __init__(self, sup: Supervisor, base_dir: Path, name: str = "etcd", size: int = 3) -> None:
        if size < 1:
            raise LabError("an etcd cluster needs at least one member")
        self.sup = sup
        self.base_dir = Path(base_dir)
        self.name = name
        self.size = size
        self.token = f"{name}-{uuid.uuid4().hex[:8]}"
        self.members: list[EtcdMember] = []

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
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]

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
            if all(etcd_health(m.client_url, timeout=0.5) for m in targets):
                return
            for m in targets:
                rec = self.sup.record(m.name)
                if rec is None or not rec.alive():
                    raise LabError(f"etcd member {m.name} exited during start-up: see {m.log}")
            time.sleep(0.1)
        raise LabError(f"etcd cluster {self.name} not healthy after {timeout:.0f}s: see {self.base_dir}/*.log")

    def healthy_members(self) -> list[EtcdMember]:
        return [m for m in self.members if etcd_health(m.client_url, timeout=0.5)]

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
