"""A lab's description (``lab.json``) and where its files are: what every lab command, the
netns lab and the tests read before anything runs."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drctl.lab.cluster import API_AUTH, LAB_SCOPE, SUPERUSER
from drctl.lab.etcd import LabError
from drctl.safefs import write_atomic

STATE_FILE = "lab.json"


def default_lab_dir() -> Path:
    """$PGDR_LAB_DIR, else the user's state dir. Root's home is not traversable by the
    PostgreSQL user, so root's labs live under /var/lib/pgdr."""
    env = os.environ.get("PGDR_LAB_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pgdr/lab")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgdr" / "lab"


@dataclass
class LabSite:
    name: str
    etcd_endpoints: list[str] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    entry_port: int = 0
    entry_ro_port: int = 0  # read-only entry point (0 in a lab.json written before it existed)


@dataclass
class LabState:
    dir: str
    sites: list[LabSite]
    pg_user: str
    created_at: float
    backup: bool = False
    tls: bool = False  # agents serve https with certificates of the lab's CA (<dir>/tls)
    mtls: bool = False  # ... and require client certificates

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        write_atomic(path, json.dumps(asdict(self), indent=2), 0o644)

    @classmethod
    def load(cls, lab_dir: Path) -> LabState | None:
        path = lab_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
            return cls(
                dir=doc["dir"],
                sites=[LabSite(**s) for s in doc["sites"]],
                pg_user=doc.get("pg_user", "postgres"),
                created_at=doc.get("created_at", 0.0),
                backup=bool(doc.get("backup", False)),
                tls=bool(doc.get("tls", False)),
                mtls=bool(doc.get("mtls", False)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabError(f"{path} is unreadable ({exc}): remove the lab directory by hand") from exc


def site_names(count: int) -> list[str]:
    return [chr(ord("a") + i) for i in range(count)]


# PostgreSQL refuses a Unix socket path longer than this (sizeof(sun_path) - 1): the server then
# never starts, and the lab failed much later as "no leader after bootstrap".
PG_SOCKET_PATH_MAX = 107


def check_socket_path(lab_dir: Path, nodes: int) -> None:
    """The longest socket path of the lab's PostgreSQL within PostgreSQL's limit, or a LabError
    naming the path, its length and the limit (checked before anything starts)."""
    base = os.path.abspath(lab_dir)
    longest = str(Path(base) / "site-a" / f"a{nodes}" / "sock" / ".s.PGSQL.65535")
    size = len(longest.encode())
    if size > PG_SOCKET_PATH_MAX:
        room = PG_SOCKET_PATH_MAX - (size - len(base.encode()))
        raise LabError(
            f"lab directory {lab_dir} is too deep: PostgreSQL's Unix socket path would be {longest} ({size} "
            f"bytes), above PostgreSQL's limit of {PG_SOCKET_PATH_MAX} bytes: use a lab directory (--dir) whose "
            f"absolute path is at most {room} bytes long"
        )


def dr_slot_name(site: str) -> str:
    """The permanent slot on ``site``'s primary that the other sites stream through."""
    return f"pgdr_dr_{site}"


def topology_path(lab_dir: Path) -> Path:
    return lab_dir / "topology.yaml"


def pgpass_path(lab_dir: Path) -> Path:
    """libpq password file with the lab's superuser: `PGPASSFILE=<this> psql -h ... -U postgres`."""
    return lab_dir / "pgpass"


def write_pgpass(lab_dir: Path) -> Path:
    user, password = SUPERUSER
    path = pgpass_path(lab_dir)
    write_atomic(path, f"*:*:*:{user}:{password}\n", 0o600)
    return path


def site_topology_path(lab_dir: Path, site: str) -> Path:
    """The topology file ``site``'s agents read when they reach the witness by their own path."""
    return lab_dir / f"topology-{site}.yaml"


def policy_path(lab_dir: Path) -> Path:
    return lab_dir / "policy.yaml"


def write_lab_policy(lab_dir: Path, state: LabState) -> Path:
    """The lab's policy (drctl.policy): its sites, targets a lab can meet, and drills that every
    runbook and drill command can use with no hand edits."""
    topo = yaml.safe_load(topology_path(lab_dir).read_text()) if topology_path(lab_dir).exists() else {}
    sites = topo.get("sites") or {}
    for spec in sites.values():
        spec["targets"] = {"rto_seconds": 30, "max_data_loss_bytes": 0}
        # Runbooks and drills switch over and reinitialize: the agents' admin credentials (the
        # topology file, for the sites controller, only carries read-only ones).
        spec["api_auth"] = {"username": API_AUTH[0], "password": API_AUTH[1]}
    names = [s.name for s in state.sites]
    doc: dict[str, Any] = {
        "version": 1,
        "sites": sites,
        "dr": {
            "audit_log": str(lab_dir / "audit.log"),
            "switchover_timeout_s": 120,
            "max_switchover_lag_bytes": 16 * 1024 * 1024,
        },
        "drills": {
            "site-roundtrip": {
                "kind": "site-switchover",
                "site": names[1],
                "max_lag_bytes": 16 * 1024 * 1024,
                "settle_s": 2,
            },
        },
        "paths": {"state_dir": str(lab_dir / "pgdr")},
    }
    drctl = str(Path(sys.executable).parent / "drctl")
    doc["drills"]["site-loss"] = {
        "kind": "site-loss",
        "site": names[0],
        "destructive": True,
        "power_off": [drctl, "lab", "kill-site", "--dir", str(lab_dir), "${site}"],
        "power_on": [drctl, "lab", "start-site", "--dir", str(lab_dir), "${site}"],
        "settle_s": 2,
        "timeout_s": 180,
    }
    if state.backup:
        first = lab_dir / f"site-{names[0]}"
        doc["backup"] = {
            "stanza": LAB_SCOPE,
            "repos": [{"site": names[0], "path": str(first / "repo1")}, {"path": str(first / "repo2")}],
            "schedule": {"full": "0 1 * * 0"},
        }
        doc["drills"]["restore"] = {
            "kind": "backup-restore",
            "site": names[0],
            "run_as": state.pg_user,
            "verify": [
                {"sql": "SELECT count(*) FROM pg_class", "expect_min": 100},
                {"sql": "SELECT current_setting('archive_mode')", "expect": "off"},
            ],
        }
    path = policy_path(lab_dir)
    path.write_text(
        "# Written by `drctl lab up`: the lab's sites, targets and drills (see policies/pgdr.example.yaml).\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    path.chmod(0o600)  # it copies the topology's sites, credentials included
    return path
