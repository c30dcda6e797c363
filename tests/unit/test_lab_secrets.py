"""The lab's files that hold secrets are 0600 (issue 14): topology.yaml (REST and etcd
credentials), lab.json holds none (0644)."""

from __future__ import annotations

from pathlib import Path

import yaml

from drctl.lab.lab import write_lab_topology
from drctl.lab.labstate import LabSite, LabState, topology_path


def test_lab_topology_is_private_and_carries_read_only_credentials(tmp_path: Path) -> None:
    state = LabState(
        dir=str(tmp_path),
        sites=[LabSite("a", ["http://127.0.0.1:2379"], [], 5000), LabSite("b", ["http://127.0.0.1:2479"], [], 5001)],
        pg_user="postgres",
        created_at=0.0,
    )
    path = write_lab_topology(tmp_path, state)
    assert path == topology_path(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(path.read_text())
    assert doc["sites"]["a"]["api_auth"]["username"] == "pgdr-monitor"
    state.save()
    assert (tmp_path / "lab.json").stat().st_mode & 0o777 == 0o644
    assert "password" not in (tmp_path / "lab.json").read_text()
