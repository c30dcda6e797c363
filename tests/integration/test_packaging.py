"""The shipped systemd units (packaging/systemd) pass `systemd-analyze verify` with no warning,
and the Vagrantfile passes `vagrant validate`, where those tools are installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
INSTALL_PREFIX = "/opt/pgdr/venv"  # where scripts and docs install pgdr's venv on a real host


def _stage(tmp: Path, edit: str = "") -> list[Path]:
    """The units with the install prefix pointed at this checkout's venv (verify checks that the
    commands exist), and an instance of the agent's template unit."""
    venv = Path(sys.executable).parent.parent
    out = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace(INSTALL_PREFIX, str(venv))
        if edit:
            text = text.replace("[Service]\n", f"[Service]\n{edit}\n")
        name = unit.name.replace("@.service", "@main.service")
        (tmp / name).write_text(text)
        out.append(tmp / name)
    return out


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *(f"./{u.name}" for u in units)],
        cwd=units[0].parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def test_units_exist() -> None:
    names = {u.name for u in UNITS.glob("*.service")}
    assert names == {"pgdr-site-agent@.service", "pgdr-drill-scheduler.service"}
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert f"ExecStart={INSTALL_PREFIX}/bin/" in text
        # Hardening every unit carries.
        for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n", "PrivateTmp=yes"):
            assert option in text, f"{unit.name}: missing {option.strip()}"


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = _verify(_stage(tmp_path))
    assert proc.returncode == 0, proc.stderr
    # Unknown keys and bad values are warnings (exit 0): none is allowed either.
    assert (proc.stdout + proc.stderr).strip() == "", proc.stdout + proc.stderr


@needs_systemd_analyze
def test_verify_reports_an_unknown_key(tmp_path: Path) -> None:
    """The check above can fail: a misspelt option is reported."""
    proc = _verify(_stage(tmp_path, edit="RestartSecs=5"))
    assert "Unknown key 'RestartSecs'" in proc.stdout + proc.stderr


VAGRANT_DIR = ROOT / "vagrant"
needs_vagrant = pytest.mark.skipif(
    shutil.which("vagrant") is None, reason="vagrant is not installed (apt-get install vagrant; scripts/setup does)"
)


def _vagrant_validate(cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # --ignore-provider: no hypervisor here (validation of the provider blocks needs one).
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "VAGRANT_HOME": str(home / "vagrant.d")},
    )


@needs_vagrant
def test_vagrantfile_validates(tmp_path: Path) -> None:
    # A copy of vagrant/ beside the provisioning script, so that the run leaves no .vagrant/ behind.
    (tmp_path / "vagrant").mkdir()
    shutil.copy(VAGRANT_DIR / "Vagrantfile", tmp_path / "vagrant" / "Vagrantfile")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install-node", tmp_path / "scripts" / "install-node")
    proc = _vagrant_validate(tmp_path / "vagrant", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    # Two sites of three VMs and the witness.
    for vm in ("w1", "a1", "a2", "a3", "b1", "b2", "b3"):
        assert f"{vm}: Ignoring provider config" in proc.stdout


@needs_vagrant
def test_vagrant_validate_reports_a_missing_provisioning_script(tmp_path: Path) -> None:
    """The check above can fail: without scripts/install-node beside it, validation fails."""
    (tmp_path / "vagrant").mkdir()
    shutil.copy(VAGRANT_DIR / "Vagrantfile", tmp_path / "vagrant" / "Vagrantfile")
    proc = _vagrant_validate(tmp_path / "vagrant", tmp_path)
    assert proc.returncode != 0
    assert "install-node" in proc.stdout + proc.stderr


def test_install_node_is_valid_bash_and_refuses_bad_arguments() -> None:
    script = ROOT / "scripts" / "install-node"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr


def _install_node_config(tmp: Path, *extra: str) -> tuple[Path, Path | None]:
    """What install-node writes to /etc/pgdr for node b1 of the Vagrant layout, staged in tmp with
    the secrets pointed at a private file (the agent refuses an unreadable or world-readable one)."""
    args = ["--role", "node", "--site", "b", "--name", "b1", "--address", "192.168.56.21"]
    args += ["--etcd", "192.168.56.21,192.168.56.22,192.168.56.23", "--standby-of", "192.168.56.11:5432"]
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-node"), "--print-config", *args, *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    secret = tmp / "api-admin.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    main, _, topology = proc.stdout.partition("\n---\n")
    topo_path = tmp / "topology.yml" if topology else None
    main = main.replace("/etc/pgdr/api-admin.password", str(secret))
    main = main.replace("/etc/pgdr/topology.yml", str(topo_path))
    (tmp / "main.yml").write_text(main)
    if topo_path is not None:
        topo_path.write_text(topology)
    return tmp / "main.yml", topo_path


def _validate_agent_config(path: Path) -> subprocess.CompletedProcess[str]:
    agent = Path(sys.executable).parent / "site-agent"
    return subprocess.run([str(agent), "--validate-config", str(path)], capture_output=True, text=True, timeout=60)


def test_install_node_writes_a_configuration_the_agent_accepts(tmp_path: Path) -> None:
    main, topology = _install_node_config(tmp_path)
    assert topology is None
    proc = _validate_agent_config(main)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_node_makes_a_node_cross_site_aware(tmp_path: Path) -> None:
    """With --site-dcs the node reads the other site and the witness (a returning site demotes on
    sight): the agent accepts the `dr:` section and drctl accepts the same topology file."""
    main, topology = _install_node_config(
        tmp_path,
        *("--site-dcs", "a=192.168.56.11,192.168.56.12,192.168.56.13"),
        *("--site-dcs", "b=192.168.56.21,192.168.56.22,192.168.56.23"),
        *("--entry", "a=192.168.56.11:5432", "--entry", "b=192.168.56.21:5432"),
        *("--witness", "192.168.56.30", "--repo", "/var/lib/pgbackrest/site-b"),
    )
    assert topology is not None
    proc = _validate_agent_config(main)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dr:\n  site: b\n" in main.read_text()
    drctl = Path(sys.executable).parent / "drctl"
    proc = subprocess.run([str(drctl), "policy", "validate", str(topology)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "192.168.56.30:2379" in topology.read_text()


def test_install_node_refuses_a_site_without_its_entry_point() -> None:
    node = ["--role", "node", "--site", "a", "--name", "a1", "--address", "10.0.0.1", "--etcd", "10.0.0.1"]
    sites = ["--site-dcs", "a=10.0.0.1", "--site-dcs", "b=10.0.1.1", "--entry", "a=10.0.0.1:5432"]
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-node"), "--print-config", *node, *sites],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "--entry b=HOST:PORT" in proc.stderr
