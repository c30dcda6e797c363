"""Network-namespace primitives for the multi-host lab (drctl.lab.netns): running commands in a
namespace, entering one from a thread, and the capability check the tests skip on.

Everything here acts only on namespaces whose names the caller passes (the lab's own, with its
unique prefix); nothing touches the root namespace's interfaces, addresses or rules."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from drctl.lab.etcd import LabError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_local = threading.local()


def ns_path(ns: str) -> Path:
    return NETNS_DIR / ns


def ns_argv(ns: str) -> list[str]:
    """Prefix that runs a command inside ``ns``. nsenter enters and execs in place: the PID the
    supervisor records is the command's own (``ip netns exec`` would also remount /sys)."""
    return ["nsenter", f"--net={ns_path(ns)}", "--"]


def run(argv: Sequence[str], ns: str | None = None, input: str | None = None, check: bool = True) -> str:
    full = [*(ns_argv(ns) if ns else []), *argv]
    proc = subprocess.run(full, capture_output=True, text=True, input=input, timeout=30)
    if check and proc.returncode != 0:
        where = f" in namespace {ns}" if ns else ""
        raise LabError(f"`{' '.join(argv)}`{where} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block with the calling thread in ``ns`` (setns is per thread): sockets created in
    it belong to ``ns`` and keep working after the block. Threads started in the block inherit it.
    Nested uses restore the previous namespace."""
    target = os.open(ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(back)  # failing here would leave the thread in the lab: let it raise
    finally:
        os.close(target)
        os.close(back)


def netns_support() -> str | None:
    """None when this machine can build the lab; else why not (for a clear skip or error)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/setup installs iproute2, util-linux and nftables)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing: the lab's WAN relay needs TUN devices"
    probe = f"pgdrprobe{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", probe)
    except LabError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        ip("tuntap", "add", "dev", "t0", "mode", "tun", ns=probe)
        run(["nft", "add", "table", "inet", "probe"], ns=probe)
    except LabError as exc:
        return str(exc)
    finally:
        ip("netns", "del", probe, check=False)
    return None


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
