#!/usr/bin/env bash
# Idempotent set-up of the benchmark's own tools (never part of pgdr's dependencies):
#  - bench/.venv-patroni: Patroni from PyPI in a venv built from /usr/bin/python3, in a directory the
#    `postgres` OS user can read (Patroni runs as postgres, like PostgreSQL);
#  - matplotlib in the main venv (.venv) for the timelines.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$here/.venv-patroni"

if [[ ! -x "$venv/bin/patroni" ]]; then
    echo "bench-setup: creating $venv (patroni[etcd3,psycopg3])"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "patroni[etcd3,psycopg3]" "psycopg[binary]"
fi
chmod -R a+rX "$venv"

if ! "$root/.venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    echo "bench-setup: installing matplotlib into $root/.venv (bench only, not a pgdr dependency)"
    "$root/.venv/bin/pip" install -q matplotlib
fi
mkdir -p "$here/results"
echo "bench-setup: patroni $("$venv/bin/patroni" --version 2>/dev/null | awk '{print $2}'), matplotlib ok"
