"""`make demo`: as much of the product as exists, on a local two-site lab.

Now: a two-site lab (per site a 3-member etcd cluster and three PostgreSQL 15 nodes) and
`drctl lab status`. The lab is left running; `drctl lab down` stops it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from drctl.lab.lab import Lab, default_lab_dir


def drctl(*args: str) -> None:
    print(f"\n$ drctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "drctl.cli.main", *args], check=True)


def main() -> int:
    lab_dir = default_lab_dir()
    os.environ["PGDR_LAB_DIR"] = str(lab_dir)
    if Lab(lab_dir).running():
        print(f"stopping the previous demo lab in {lab_dir}")
        drctl("lab", "down")
    started = time.monotonic()
    drctl("lab", "up", "--sites", "2", "--nodes", "3")
    print(f"\nlab up in {time.monotonic() - started:.1f}s")
    drctl("lab", "status")
    print(f"\nThe lab keeps running. Stop it with: .venv/bin/drctl lab down --dir {lab_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
