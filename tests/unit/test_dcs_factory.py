"""DCS settings validation and backend selection."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from drctl.dcs.base import DCSError
from drctl.dcs.consul import ConsulDCS
from drctl.dcs.etcd import Etcd3
from drctl.dcs.factory import DcsSettings, get_dcs


def _make(raw: dict[str, object], retry_timeout: float = 1.0) -> object:
    return get_dcs(
        DcsSettings.model_validate(raw),
        namespace="ns",
        scope="s",
        name="a",
        ttl=30,
        retry_timeout=retry_timeout,
    )


def test_etcd_and_consul_selection() -> None:
    e = _make({"etcd": {"hosts": ["10.0.0.1:2379", "https://10.0.0.2:2379"], "username": "u", "password": "p"}})
    assert isinstance(e, Etcd3)
    assert e.client.endpoints == ["http://10.0.0.1:2379", "https://10.0.0.2:2379"]
    c = _make({"consul": {"host": "10.0.0.9", "port": 8501, "scheme": "https", "token": "t"}})
    assert isinstance(c, ConsulDCS)
    assert c.endpoint == "https://10.0.0.9:8501"
    assert DcsSettings.model_validate({"etcd": {"hosts": ["h:1"]}}).hosts == ["h:1"]


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"etcd": {"hosts": ["h:1"]}, "consul": {}},
        {"etcd": {"hosts": []}},
        {"etcd": {"hosts": ["h:1"], "hostz": ["typo"]}},
        {"etcd": {"hosts": ["h:1"]}, "extra": 1},
        {"consul": {"port": 0}},
        {"consul": {"tokn": "x"}},
        {"etcd": {"hosts": ["h:1"], "password": "p"}},
        {"etcd": {"hosts": ["h:1"], "key": "k.pem"}},
    ],
)
def test_invalid_settings_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DcsSettings.model_validate(raw)


def test_unreachable_etcd_names_hosts() -> None:
    d = _make({"etcd": {"hosts": ["127.0.0.1:1", "127.0.0.1:2"]}}, retry_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DCSError) as err:
        d.get_cluster()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 1.0
    assert "127.0.0.1:1" in str(err.value) and "127.0.0.1:2" in str(err.value)


def test_unreachable_consul_raises_dcserror() -> None:
    d = _make({"consul": {"host": "127.0.0.1", "port": 1}}, retry_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DCSError) as err:
        d.get_cluster()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 1.5
    assert "127.0.0.1:1" in str(err.value)
