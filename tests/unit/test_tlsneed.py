"""Whether the agent keeps Python's ssl module out (site_agent.tlsneed, site_agent.main): only when
nothing in its configuration can need TLS; anything doubtful keeps ssl in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from site_agent.tlsneed import document_wants_tls, tls_wanted

PLAIN = """
scope: main
name: a1
etcd3:
  hosts: [127.0.0.1:2379]
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
postgresql:
  data_dir: /var/lib/pg/data
  authentication:
    superuser: {username: postgres, password: x, sslmode: prefer}
"""


def test_a_plain_configuration_needs_no_ssl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDR_AGENT_SSL", raising=False)
    path = tmp_path / "agent.yml"
    path.write_text(PLAIN)
    assert not tls_wanted(str(path))


@pytest.mark.parametrize(
    "doc",
    [
        {"etcd3": {"protocol": "https", "hosts": ["h:2379"]}},
        {"etcd3": {"hosts": ["HTTPS://h:2379"]}},
        {"etcd3": {"cacert": "/etc/ca.pem"}},
        {"consul": {"scheme": "https"}},
        {"restapi": {"certfile": "/etc/c.pem"}},
        {"restapi": {"cafile": "/etc/ca.pem"}},
        {"restapi": {"verify_client": "required"}},
        {"x": [{"y": ["https://peer:8008"]}]},
    ],
)
def test_any_tls_setting_or_https_anywhere_keeps_ssl(doc: object) -> None:
    assert document_wants_tls(doc)


def test_empty_tls_settings_do_not(tmp_path: Path) -> None:
    assert not document_wants_tls({"restapi": {"certfile": None, "cafile": "", "verify_client": "none"}})


def test_doubt_keeps_ssl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDR_AGENT_SSL", raising=False)
    assert tls_wanted(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("scope: [unclosed\n")
    assert tls_wanted(str(bad))
    bomb = tmp_path / "bomb.yml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )
    assert tls_wanted(str(bomb))


def test_a_dr_topology_is_read_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDR_AGENT_SSL", raising=False)
    topo = tmp_path / "topology.yml"
    topo.write_text("sites:\n  a:\n    dcs: {etcd3: {hosts: ['h:2379']}}\n")
    path = tmp_path / "agent.yml"
    path.write_text(PLAIN + f"dr:\n  site: a\n  topology: {topo}\n")
    assert not tls_wanted(str(path))
    topo.write_text("sites:\n  a:\n    dcs: {etcd3: {hosts: ['https://h:2379']}}\n")
    assert tls_wanted(str(path))
    topo.unlink()
    assert tls_wanted(str(path))  # unreadable topology: doubt


def test_the_environment_decides_when_it_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.yml"
    path.write_text(PLAIN)
    monkeypatch.setenv("PGDR_AGENT_SSL", "1")
    assert tls_wanted(str(path))
    monkeypatch.setenv("PGDR_AGENT_SSL", "0")
    assert not tls_wanted(str(tmp_path / "missing.yml"))


PROBE = """
import sys
import site_agent.main as m
sys.argv = ["site-agent", sys.argv[1]]
if m._without_ssl_unless_configured(sys.argv[1:]):
    m._import_psycopg_without_ssl()
else:
    m._prefer_system_libpq()
import site_agent.daemon, urllib3, psycopg, asyncio
from psycopg import pq
ssl = sys.modules.get("ssl")
print(pq.__impl__, "none" if ssl is None else ("real" if hasattr(ssl, "SSLContext") else "stand-in"))
"""


@pytest.mark.parametrize(("env", "expected"), [("0", "none"), ("1", "real")])
def test_the_agent_imports_everything_with_and_without_ssl(tmp_path: Path, env: str, expected: str) -> None:
    """The agent's whole import graph loads with ssl kept out (psycopg on the system libpq, not the
    bundled one, and no stand-in left behind for urllib3/http.client to find)."""
    path = tmp_path / "agent.yml"
    path.write_text(PLAIN)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PGDR_AGENT_SSL": env, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["python", expected]
