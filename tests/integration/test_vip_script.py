"""packaging/callbacks/pgdr-vip on a real interface (a veth pair in a namespace of its own): the
address is held exactly while the role is primary, dropped on every stop, and bad arguments are
refused with a message."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.lab.netns_hosts import VIP_SCRIPT
from drctl.lab.nsutil import ip, netns_support, ns_argv

WHY = netns_support()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no network namespaces here: {WHY}")

VIP = "10.99.0.100/24"


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"pgdrvip{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        ip("link", "add", "d0", "type", "veth", "peer", "name", "d1", ns=name)  # no dummy module here
        ip("link", "set", "d0", "up", ns=name)
        ip("link", "set", "d1", "up", ns=name)
        yield name
    finally:
        ip("netns", "del", name, check=False)


def call(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ns_argv(ns), str(VIP_SCRIPT), *args], capture_output=True, text=True, timeout=30)


def held(ns: str) -> bool:
    return " inet 10.99.0.100/24 " in ip("-o", "addr", "show", "dev", "d0", ns=ns)


def test_the_address_follows_the_role(ns: str) -> None:
    assert Path(VIP_SCRIPT).is_file()
    steps = [
        (("on_start", "replica"), False),
        (("on_role_change", "primary"), True),
        (("on_role_change", "primary"), True),  # again: idempotent
        (("on_stop", "demoted"), False),
        (("on_start", "primary"), True),
        (("on_role_change", "standby_leader"), False),  # a standby leader is not writable
        (("on_restart", "master"), True),  # Patroni before 4 said master
        (("on_role_change", "replica"), False),
        (("on_stop", "replica"), False),
    ]
    for (action, role), expected in steps:
        res = call(ns, VIP, "d0", action, role, "pgdr")
        assert res.returncode == 0, (action, role, res.stdout, res.stderr)
        assert held(ns) is expected, (action, role)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((VIP, "d0", "on_start"), "usage"),
        (("10.99.0.100", "d0", "on_start", "primary", "x"), "prefix length"),
        ((VIP, "d0", "on_promote", "primary", "x"), "unknown action"),
    ],
)
def test_bad_arguments_are_refused(ns: str, args: tuple[str, ...], needle: str) -> None:
    res = call(ns, *args)
    assert res.returncode == 2 and needle in res.stderr
    assert not held(ns)


def test_a_missing_device_fails_the_callback(ns: str) -> None:
    res = call(ns, VIP, "nosuchdev", "on_role_change", "primary", "pgdr")
    assert res.returncode != 0
