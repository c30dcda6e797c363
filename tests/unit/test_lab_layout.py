"""The layout both kinds of lab take (drctl.lab.sitebuild.LabLayout): refused up front when it
cannot be built, and the DR rules (cross-site sections, witness) said once."""

from __future__ import annotations

from typing import TypedDict

import pytest

from drctl.lab.etcd import LabError
from drctl.lab.sitebuild import LabLayout


class Counts(TypedDict, total=False):
    sites: int
    nodes: int
    etcd_members: int


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"sites": 0}, "at least 1"),
        ({"nodes": 0}, "at least 1"),
        ({"etcd_members": 0}, "at least 1"),
        ({"sites": 27}, "at most 26 sites"),
    ],
)
def test_a_layout_that_cannot_be_built_is_refused(kw: Counts, message: str) -> None:
    with pytest.raises(LabError, match=message):
        LabLayout(**kw)


def test_cross_site_and_witness_only_in_a_dr_layout_of_several_sites() -> None:
    assert LabLayout(sites=2).cross_site and not LabLayout(sites=2).has_witness
    assert LabLayout(sites=2, witness=True).has_witness
    assert not LabLayout(sites=1, witness=True).cross_site and not LabLayout(sites=1, witness=True).has_witness
    assert not LabLayout(sites=3, dr=False, witness=True).cross_site
    assert not LabLayout(sites=3, dr=False, witness=True).has_witness
    assert LabLayout(sites=26).sites == 26
