"""The compiled lease keeper (keeper.c, the same program as site_agent.keeper in ~1 MB of
resident memory instead of ~12 MB): where it is, whether it is current, and how to build it.

    python -m site_agent.keeperbin build [--cc CC] [--output PATH]

`make setup` and scripts/install-node build it next to this module (``bin/pgdr-lease-keeper``).
The agent runs it when it exists and is newer than keeper.c (a binary older than its source is
stale: the Python keeper runs instead, and the agent says so); ``PGDR_LEASE_KEEPER=python``
forces the Python keeper, ``PGDR_LEASE_KEEPER=PATH`` names another binary.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "keeper.c")
DEFAULT_BINARY = os.path.join(HERE, "bin", "pgdr-lease-keeper")
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra"]


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def binary() -> tuple[str | None, str]:
    """(the compiled keeper to run, or None for the Python one; why, in a few words)."""
    chosen = os.environ.get("PGDR_LEASE_KEEPER", "")
    if chosen == "python":
        return None, "PGDR_LEASE_KEEPER=python"
    if chosen:
        if os.access(chosen, os.X_OK):
            return chosen, f"PGDR_LEASE_KEEPER={chosen}"
        return None, f"PGDR_LEASE_KEEPER={chosen} is not an executable file"
    built = _mtime(DEFAULT_BINARY)
    if built is None or not os.access(DEFAULT_BINARY, os.X_OK):
        return None, f"no compiled keeper at {DEFAULT_BINARY} (python -m site_agent.keeperbin build)"
    source = _mtime(SOURCE)
    if source is not None and built < source:
        return None, f"{DEFAULT_BINARY} is older than keeper.c (python -m site_agent.keeperbin build)"
    return DEFAULT_BINARY, "compiled"


def build(output: str = DEFAULT_BINARY, cc: str | None = None, extra_flags: tuple[str, ...] = ()) -> str:
    """Compile keeper.c into ``output`` (atomically: a half-written binary is never run).
    Raises RuntimeError naming the compiler's complaint."""
    import shutil  # build time only

    compiler = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (cc/gcc): install gcc, or run the Python keeper")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.{os.getpid()}.tmp"
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, *extra_flags, "-o", tmp, SOURCE, "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCE}:\n{done.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def main(argv: list[str] | None = None) -> int:
    import argparse  # here: the agent imports this module to find the keeper binary only

    ap = argparse.ArgumentParser(prog="python -m site_agent.keeperbin", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile keeper.c")
    b.add_argument("--cc", default=None, help="C compiler (default: $CC, cc, gcc)")
    b.add_argument("--output", default=DEFAULT_BINARY, help=f"where to write it ({DEFAULT_BINARY})")
    args = ap.parse_args(argv)
    try:
        out = build(args.output, args.cc)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        sys.exit(f"keeperbin: error: {exc}")  # on stderr, status 1
    print(f"keeperbin: built {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
