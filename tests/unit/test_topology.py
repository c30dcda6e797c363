"""The topology file: the shipped example loads; bad input names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from drctl.sites.topology import TopologyError, load_topology

REPO = Path(__file__).resolve().parents[2]


def test_shipped_example_loads() -> None:
    t = load_topology(REPO / "policies" / "topology.example.yaml")
    assert set(t.sites) == {"dc1", "dc2"}
    assert t.site("dc1").entry_host_port == ("pg-dc1.example.net", 5000)
    assert t.others("dc1") == ["dc2"]


def test_unknown_field_names_file_and_field(tmp_path: Path) -> None:
    text = (REPO / "policies" / "topology.example.yaml").read_text().replace("scope: pg-main", "scop: pg-main", 1)
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(TopologyError) as err:
        load_topology(p)
    assert str(p) in str(err.value) and "sites.dc1" in str(err.value)


def test_bad_entry_point_and_yaml(tmp_path: Path) -> None:
    text = (REPO / "policies" / "topology.example.yaml").read_text().replace("pg-dc1.example.net:5000", "nohost")
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(TopologyError, match="entry_point"):
        load_topology(p)
    p.write_text("sites: [unclosed")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(p)
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    t = load_topology(REPO / "policies" / "topology.example.yaml")
    with pytest.raises(TopologyError, match="no site 'dc9'"):
        t.site("dc9")
