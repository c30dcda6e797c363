"""A throwaway certificate authority for TLS labs (``drctl lab up --tls``), made with the openssl
CLI: one CA per lab, one certificate per agent (valid for 127.0.0.1 and localhost, usable as a
server and as a client certificate). Keys are 0600; nothing here is meant for production."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from drctl.lab.etcd import LabError
from drctl.safefs import write_atomic

DAYS = "7"
_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = {san}
"""


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise LabError("the openssl CLI is not installed (apt-get install openssl): needed for --tls")
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise LabError(f"openssl {args[0]}: {last}")


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class LabCA:
    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def key(self) -> Path:
        return self.dir / "ca.key"

    @classmethod
    def create(cls, directory: Path, name: str = "pgdr lab CA") -> LabCA:
        directory.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() or c in " .-_" else "_" for c in name)  # one RDN value
        ca = cls(directory)
        if ca.cert.exists() and ca.key.exists():
            return ca
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", DAYS, "-subj", f"/CN={name}", "-keyout", str(ca.key), "-out", str(ca.cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        os.chmod(ca.key, 0o600)
        os.chmod(ca.cert, 0o644)
        return ca

    def issue(
        self,
        out_dir: Path,
        name: str,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        common_name: bool = True,
        owner: tuple[int, int] | None = None,
    ) -> CertPair:
        """A certificate for ``name`` signed by this CA, written to ``out_dir``/NAME.crt and .key
        (0600). ``common_name=False`` leaves the CN out (subject O/OU only): etcd 3.4's JSON
        gateway refuses a client certificate with a CommonName when client-cert-auth is on."""
        subject = f"/CN={name}" if common_name else f"/O=pgdr lab/OU={name}"
        pair = CertPair(out_dir / f"{name}.crt", out_dir / f"{name}.key")
        san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
        with tempfile.TemporaryDirectory(prefix="pgdr-tls-") as tmp:
            csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
            ext.write_text(_EXT.format(san=san))
            _openssl(
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", subject, "-keyout", str(Path(tmp) / "key.pem"), "-out", str(csr),
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", DAYS,
                "-extfile", str(ext), "-out", str(Path(tmp) / "cert.pem"),
            )  # fmt: skip
            uid, gid = owner or (None, None)
            write_atomic(pair.key, (Path(tmp) / "key.pem").read_bytes(), 0o600, uid, gid)
            write_atomic(pair.cert, (Path(tmp) / "cert.pem").read_bytes(), 0o644, uid, gid)
        return pair
