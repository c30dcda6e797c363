"""Running the operator's fencing command (STONITH) against an old leader: argv only (never a
shell), a timeout after which the command's whole process group is killed, and a one-line
outcome for the log."""

from __future__ import annotations

import os
from collections.abc import Sequence

from drctl.procutil import communicate_or_kill, popen_captured

__all__ = ["FenceTarget", "run_fence"]


class FenceTarget:
    __slots__ = ("api_url", "conn_url", "host", "name")

    def __init__(self, name: str, host: str = "", api_url: str = "", conn_url: str = "") -> None:
        self.name, self.host, self.api_url, self.conn_url = name, host, api_url, conn_url


def run_fence(command: Sequence[str], target: FenceTarget, timeout: float) -> tuple[bool, str]:
    """(fenced, what happened). Exit status 0 means the old leader is fenced."""
    argv = [*command, target.name, target.host, target.api_url]
    env = dict(os.environ)
    env.update(
        PGDR_FENCE_NAME=target.name,
        PGDR_FENCE_HOST=target.host,
        PGDR_FENCE_API_URL=target.api_url,
        PGDR_FENCE_CONN_URL=target.conn_url,
    )
    try:
        proc = popen_captured(argv, env=env, merge_stderr=True)
    except OSError as exc:
        return False, f"cannot run {argv[0]!r}: {exc}"
    out, _, code = communicate_or_kill(proc, timeout)
    if code is None:
        return False, f"{argv[0]} did not finish within {timeout:g}s (killed)"
    text = out.decode("utf-8", "replace").strip().splitlines()
    tail = f": {text[-1][:200]}" if text else ""
    if code == 0:
        return True, f"{argv[0]} exited 0{tail}"
    return False, f"{argv[0]} exited {code}{tail}"
