"""Bytes the PRIMARY sends to build a new replica: pg_basebackup vs pgBackRest restore.

Usage: .venv/bin/python bench/rebuild_bytes.py [--scale 35] [--keep]

One primary (PostgreSQL 15, archive_mode on with pgBackRest's archive-push into one posix
repository), a pgbench database of ``--scale`` (35: about 530 MB), a full pgBackRest backup
(its bytes are not counted: they come from the backup schedule, not from a rebuild), then
about 50 MB of new rows, so that a replica built from the backup has WAL to catch up. Every
replica reaches the primary only through a counting TCP proxy in front of the primary's port;
what is measured is the bytes the proxy carried primary -> replica (and replica -> primary).

(a) ``pg_basebackup -X stream -c fast`` through the proxy into an empty directory, then the
    copy is started as a streaming standby (primary_conninfo = proxy) until it has replayed
    the primary's current LSN.
(b) ``pgbackrest restore --type=standby`` into an empty directory (from the repository: no
    primary traffic), then the standby starts with restore_command = archive-get (WAL from
    the repository) and primary_conninfo = proxy, until it has replayed the primary's LSN.
(c) (b)'s replica stopped, 50 MB more rows on the primary, ``restore --delta --type=standby``
    over it and the same catch-up.

Writes bench/results/rebuild-bytes-<timestamp>.json and a Markdown table (a section in
bench/results/summary.md between markers, replaced on each run; bench/results/rebuild_bytes.md
when there is no summary.md). Must run as root (PostgreSQL runs as ``postgres``). Every
postmaster is stopped by PID at the end; the lab directory under /tmp is removed unless
``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from drctl.backup import PgBackRest
from drctl.backup.restore import strip_pgbackrest_recovery
from drctl.lab.netproxy import TcpProxy
from drctl.lab.postgres import LAB_HBA, PG_BIN
from drctl.lab.scratch import PG_USER, ScratchLab, ScratchNode, posix_repo
from drctl.pg import probe
from drctl.pg.osuser import user_env, user_prefix

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 * 1024
EXTRA_ROWS_PER_MB = 1850  # rows of ~560 bytes (heap tuple + md5 padding): about 1 MB of table
SECTION_START = "<!-- rebuild-bytes:start -->"
SECTION_END = "<!-- rebuild-bytes:end -->"


class CountingProxy(TcpProxy):
    """TcpProxy that counts the bytes it forwards in each direction (and reads larger chunks)."""

    chunk = 256 * 1024

    def __init__(self, target_port: int) -> None:
        self.count_lock = threading.Lock()
        self.down = 0  # target (primary) -> client (replica)
        self.up = 0  # client -> target
        self.connections = 0
        super().__init__(target_port)

    def reset(self) -> None:
        with self.count_lock:
            self.down = self.up = self.connections = 0

    def counts(self) -> dict[str, int]:
        with self.count_lock:
            return {"primary_to_replica": self.down, "replica_to_primary": self.up, "connections": self.connections}

    def _opened(self) -> None:
        with self.count_lock:
            self.connections += 1

    def _forwarded(self, from_client: bool, n: int) -> None:
        with self.count_lock:
            if from_client:
                self.up += n
            else:
                self.down += n


def log_size(n: ScratchNode) -> int:
    try:
        return n.ctl.log_file.stat().st_size
    except OSError:
        return 0


def log_since(n: ScratchNode, offset: int) -> str:
    try:
        with open(n.ctl.log_file, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(probe.ProbeError):
            value = predicate()
            if value:
                return value
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_as_pg(argv: list[str], timeout: float, cwd: Path) -> str:
    proc = subprocess.run(
        [*user_prefix(PG_USER), *argv],
        cwd=cwd,
        env={**user_env(PG_USER), "LC_ALL": "C"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout + proc.stderr


def write_rows(p: ScratchNode, mb: int) -> dict[str, Any]:
    """About ``mb`` MB of new rows in table ``extra``; returns the WAL it generated."""
    p.sql("CREATE TABLE IF NOT EXISTS extra (id bigserial PRIMARY KEY, pad text)")
    before = p.val("SELECT pg_current_wal_lsn()::text")
    started = time.monotonic()
    p.sql(
        "INSERT INTO extra (pad) SELECT repeat(md5(g::text), 16) FROM generate_series(1, %s) g",
        (mb * EXTRA_ROWS_PER_MB,),
        timeout_ms=None,
    )
    wal = int(p.val("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (before,)))
    return {"target_mb": mb, "wal_bytes": wal, "seconds": round(time.monotonic() - started, 2)}


def wait_archiver_idle(p: ScratchNode, timeout: float = 300.0) -> None:
    """Continuous archiving has caught up: no segment is waiting (.ready) in pg_wal."""
    status = p.ctl.data_dir / "pg_wal" / "archive_status"
    wait_for(lambda: not any(status.glob("*.ready")), timeout, "the archiver to catch up")


def catch_up(p: ScratchNode, r: ScratchNode, timeout: float = 900.0) -> dict[str, Any]:
    """Wait until the standby ``r`` has replayed the primary's current LSN (taken now) and its
    WAL receiver is streaming from the primary (through the proxy)."""
    target = p.val("SELECT pg_current_wal_lsn()::text")
    wait_for(
        lambda: r.val(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
            " AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
            (target,),
        ),
        timeout,
        f"{r.name} to replay {target} and stream",
    )
    start, status = r.sql("SELECT receive_start_lsn::text, status FROM pg_stat_wal_receiver")[0]
    tail = int(r.val("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (target, start)))
    return {"target_lsn": target, "wal_receiver": status, "stream_start_lsn": start, "streamed_wal_to_target": tail}


def start_standby(p: ScratchNode, r: ScratchNode, proxy: CountingProxy, restore_command: str | None) -> None:
    conninfo = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres application_name={r.name}"
    r.ctl.configure(r.params(), LAB_HBA)  # the copy carries the primary's pgdr.conf: own port etc.
    r.ctl.set_recovery(primary_conninfo=conninfo, restore_command=restore_command)
    r.ctl.start(timeout=300)


def restore_and_catch_up(
    p: ScratchNode, b: ScratchNode, pgbr_b: PgBackRest, proxy: CountingProxy, delta: bool
) -> dict[str, Any]:
    """``pgbackrest restore --type=standby`` into ``b``, then its catch-up through the proxy."""
    proxy.reset()
    t0 = time.monotonic()
    pgbr_b.restore(b.ctl.data_dir, type="standby", delta=delta)
    copy_s = time.monotonic() - t0
    bytes_copy = proxy.counts()
    strip_pgbackrest_recovery(b.ctl.data_dir, PG_USER)
    log_off = log_size(b)
    start_standby(p, b, proxy, restore_command=pgbr_b.archive_get_command())
    caught = catch_up(p, b)
    wall_s = time.monotonic() - t0
    return {
        "bytes": proxy.counts(),
        "bytes_during_restore": bytes_copy,
        "copy_s": round(copy_s, 2),
        "wall_s": round(wall_s, 2),
        "segments_from_repo": restored_segments(log_since(b, log_off)),
        **caught,
    }


def restored_segments(log: str) -> int:
    return sum(1 for line in log.splitlines() if "restored log file" in line)


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def fmt_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:,.1f} MB"


def markdown(doc: dict[str, Any], json_name: str) -> str:
    a, b, c = doc["a_basebackup"], doc["b_restore_standby"], doc["c_delta_restore"]
    rat = doc["ratios"]
    rows = [
        ("(a) pg_basebackup -X stream + catch-up", a, "1"),
        ("(b) pgBackRest restore --type=standby + catch-up", b, f"{rat['b_over_a']:.4f}"),
        ("(c) restore --delta over stopped old replica + catch-up", c, f"{rat['c_over_a']:.4f}"),
    ]
    lines = [
        SECTION_START,
        "## Rebuild a replica: bytes sent by the primary (pg_basebackup vs pgBackRest)",
        "",
        f"Generated {doc['timestamp']} by `bench/rebuild_bytes.py` ({json_name}). pgbench scale "
        f"{doc['scale']}, database {fmt_mb(doc['db_size_bytes'])}; {doc['extra_mb']} MB of new rows after "
        "the full backup (and again before (c)). Bytes counted by a TCP proxy in front of the "
        "primary's port, the replica's only route to it; the backup itself is not counted (it comes "
        "from the backup schedule), WAL from the repository (archive-get) does not go through the primary.",
        "",
        "| rebuild | primary -> replica | replica -> primary | ratio to (a) | wall time | of which copy/restore |",
        "|---|---|---|---|---|---|",
    ]
    for label, r, ratio in rows:
        lines.append(
            f"| {label} | {fmt_mb(r['bytes']['primary_to_replica'])} | {fmt_mb(r['bytes']['replica_to_primary'])} "
            f"| {ratio} | {r['wall_s']:.1f} s | {r['copy_s']:.1f} s |"
        )
    lines += [
        "",
        f"WAL segments replayed from the repository: (b) {b['segments_from_repo']}, (c) {c['segments_from_repo']}; "
        "WAL streamed from the primary, from where the WAL receiver started (a segment boundary) to the "
        f"primary's LSN: (a) {fmt_mb(a['streamed_wal_to_target'])}, (b) {fmt_mb(b['streamed_wal_to_target'])}, "
        f"(c) {fmt_mb(c['streamed_wal_to_target'])}. "
        f"Full backup (not counted): {doc['backup']['seconds']:.1f} s, repository size "
        f"{fmt_mb(doc['backup']['repo_size'])}.",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def write_markdown(text: str, results: Path) -> Path:
    summary = results / "summary.md"
    if not summary.exists():
        out = results / "rebuild_bytes.md"
        out.write_text(text)
        return out
    current = summary.read_text()
    if SECTION_START in current and SECTION_END in current:
        head, _, rest = current.partition(SECTION_START)
        _, _, tail = rest.partition(SECTION_END)
        new = head + text.rstrip("\n") + tail
    else:
        new = current.rstrip("\n") + "\n\n" + text
    summary.write_text(new)
    return summary


def bench(base: Path, scale: int, extra_mb: int) -> dict[str, Any]:
    lab = ScratchLab(base, max_wal_size="1GB")
    proxy: CountingProxy | None = None
    node = lab.node

    try:
        p = node("p")
        pgbr = lab.backrest(p, [posix_repo(base, "repo", retention_full=2)], archive_timeout=60)
        cfg = pgbr.cfg
        lab.start_archiving_primary(p, pgbr)

        say(f"pgbench -i -s {scale}")
        t0 = time.monotonic()
        run_as_pg(
            [str(PG_BIN / "pgbench"), "-i", "-s", str(scale), "-q", "-h", str(p.sock), "-p", str(p.port), "postgres"],
            timeout=3600,
            cwd=base,
        )
        init_s = time.monotonic() - t0
        db_size = int(p.val("SELECT pg_database_size('postgres')"))
        say(f"database {db_size / MB:.0f} MB in {init_s:.0f} s; waiting for the archiver")
        p.sql("CHECKPOINT", timeout_ms=None)
        wait_archiver_idle(p)

        say("full backup (not counted)")
        t0 = time.monotonic()
        full = pgbr.backup("full")
        backup = {
            "label": full.label,
            "seconds": round(time.monotonic() - t0, 2),
            "size": full.size,
            "repo_size": full.repo_size,
            "start_lsn": full.lsn.start_lsn,
        }

        say(f"{extra_mb} MB of new rows after the backup")
        writes_1 = write_rows(p, extra_mb)
        wait_archiver_idle(p)

        proxy = CountingProxy(p.port)
        proxy_conninfo = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres"

        # (b) restore --type=standby from the repository, catch up (archive-get + streaming)
        say("(b) pgbackrest restore --type=standby, then catch-up through the proxy")
        b = node("b")
        # The replica's own pgBackRest configuration (pg1-path = its data directory), as on a
        # real replica host: archive-get refuses to run when PostgreSQL's working directory is
        # not pg1-path, so the primary's file cannot serve the replica's restore_command.
        pgbr_b = PgBackRest(
            cfg.model_copy(update={"pg_path": b.ctl.data_dir, "pg_port": b.port, "pg_socket_path": b.sock}),
            base / "pgbackrest-b.conf",
            run_as=PG_USER,
        )
        pgbr_b.write_config()
        res_b = restore_and_catch_up(p, b, pgbr_b, proxy, delta=False)
        say(f"(b) {res_b['bytes']['primary_to_replica'] / MB:.2f} MB in {res_b['wall_s']:.1f} s")
        b.stop(60)  # left behind: rebuilt with --delta in (c); stopped now so it streams nothing of (a)

        # (a) pg_basebackup through the proxy, then start and catch up
        say("(a) pg_basebackup through the proxy")
        a = node("a")
        proxy.reset()
        t0 = time.monotonic()
        a.ctl.basebackup(f"{proxy_conninfo} application_name=a")
        copy_a = time.monotonic() - t0
        bytes_copy_a = proxy.counts()
        start_standby(p, a, proxy, restore_command=None)
        caught_a = catch_up(p, a)
        wall_a = time.monotonic() - t0
        res_a = {
            "bytes": proxy.counts(),
            "bytes_basebackup_only": bytes_copy_a,
            "copy_s": round(copy_a, 2),
            "wall_s": round(wall_a, 2),
            "data_dir_size": dir_size(a.ctl.data_dir),
            "pg_wal_size": dir_size(a.ctl.data_dir / "pg_wal"),
            **caught_a,
        }
        say(f"(a) {res_a['bytes']['primary_to_replica'] / MB:.1f} MB in {wall_a:.1f} s")
        a.stop(60)
        shutil.rmtree(a.ctl.data_dir, ignore_errors=True)  # disk: one copy is enough

        # (c) the replica of (b) stopped and left behind, then delta restore over it
        say(f"(c) {extra_mb} MB more rows, restore --delta --type=standby over b, catch-up")
        writes_2 = write_rows(p, extra_mb)
        wait_archiver_idle(p)
        res_c = restore_and_catch_up(p, b, pgbr_b, proxy, delta=True)
        say(f"(c) {res_c['bytes']['primary_to_replica'] / MB:.2f} MB in {res_c['wall_s']:.1f} s")
        b.stop(60)

        a_bytes = res_a["bytes"]["primary_to_replica"]
        return {
            "benchmark": "rebuild_bytes",
            "scale": scale,
            "extra_mb": extra_mb,
            "db_size_bytes": db_size,
            "pgbench_init_s": round(init_s, 1),
            "pg_version": p.val("SHOW server_version"),
            "pgbackrest": run_as_pg(["pgbackrest", "version"], 30, base).strip(),
            "settings": {
                "shared_buffers": "32MB",
                "max_connections": 30,
                "wal_level": "replica",
                "max_wal_size": "1GB",
                "archive_mode": "on (pgbackrest archive-push, archive-async=n)",
                "compress_type": (base / "pgbackrest.conf").read_text().split("compress-type=")[1].split()[0],
                "process_max": cfg.process_max,
                "fsync": "on",
            },
            "backup": backup,
            "writes_after_backup": writes_1,
            "writes_before_delta": writes_2,
            "a_basebackup": res_a,
            "b_restore_standby": res_b,
            "c_delta_restore": res_c,
            "ratios": {
                "b_over_a": res_b["bytes"]["primary_to_replica"] / a_bytes,
                "c_over_a": res_c["bytes"]["primary_to_replica"] / a_bytes,
            },
        }
    finally:
        for n in reversed(lab.nodes):
            n.stop(60)
        if proxy is not None:
            proxy.close()
        alive = [n.name for n in lab.nodes if n.ctl.postmaster_pid() is not None]
        if alive:
            print(f"warning: still running: {alive}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=35, help="pgbench scale (35: about 530 MB)")
    ap.add_argument("--extra-mb", type=int, default=50, help="MB of new rows after the backup / before (c)")
    ap.add_argument("--keep", action="store_true", help="keep the lab directory under /tmp")
    ap.add_argument("--results", type=Path, default=RESULTS, help="output directory (default bench/results)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (PostgreSQL runs as the postgres user)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    os.chmod(base, 0o755)
    say(f"lab directory {base}")
    try:
        doc = bench(base, args.scale, args.extra_mb)
    finally:
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc["timestamp"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"rebuild-bytes-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc, out.name)
    where = write_markdown(md, args.results)
    print(md)
    say(f"wrote {out} and {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
