"""The etcd v3 JSON gateway's wire format, as pure functions: base64 keys and values, int64 as
strings, transaction builders (create / CAS / leadership comparisons) and reply readers (proto3
leaves out default values: a failed txn has no ``succeeded``, an empty range no ``kvs``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from drctl.dcs.base import (
    ClusterView,
)
from drctl.dcs.view import RawNode, build_cluster_view

Json = dict[str, Any]


def b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_range_end(prefix: str | bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's prefix rule)."""
    raw = bytearray(prefix.encode("utf-8") if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # every key


def to_int(value: Any, default: int = 0) -> int:
    """An int64 field of a gateway reply (a JSON string, or absent when it is 0)."""
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def api_prefix_for_version(doc: Mapping[str, Any]) -> str:
    """``/v3``, ``/v3beta`` or ``/v3alpha`` from a ``GET /version`` reply."""
    version = str(doc.get("etcdcluster") or doc.get("etcdserver") or "")
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return "/v3"  # unknown: the current API
    if (major, minor) >= (3, 4):
        return "/v3"
    if (major, minor) == (3, 3):
        return "/v3beta"
    return "/v3alpha"


def parse_body(data: bytes) -> Json:
    """A gateway reply body: one JSON object, or JSON lines (streaming RPCs) of which the first
    counts. ``{"result": X}`` is unwrapped to X. Raises ValueError on anything else."""
    text = data.decode("utf-8").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        first = text.split("\n", 1)[0]
        doc = json.loads(first)
    if not isinstance(doc, dict):
        raise ValueError(f"not a JSON object: {text[:200]!r}")
    if isinstance(doc.get("result"), dict) and "header" not in doc:
        doc = doc["result"]
    return doc


def reply_term(doc: Mapping[str, Any]) -> int:
    header = doc.get("header")
    return to_int(header.get("raft_term")) if isinstance(header, dict) else 0


def reply_revision(doc: Mapping[str, Any]) -> int:
    header = doc.get("header")
    return to_int(header.get("revision")) if isinstance(header, dict) else 0


def kvs_of(doc: Mapping[str, Any]) -> list[Json]:
    kvs = doc.get("kvs")
    return [kv for kv in kvs if isinstance(kv, dict)] if isinstance(kvs, list) else []


def txn_succeeded(doc: Mapping[str, Any]) -> bool:
    return bool(doc.get("succeeded", False))


def txn_range_kvs(doc: Mapping[str, Any]) -> list[Json]:
    """The kvs of the range responses of a txn reply (in order)."""
    out: list[Json] = []
    for resp in doc.get("responses") or []:
        if isinstance(resp, dict) and isinstance(resp.get("response_range"), dict):
            out.extend(kvs_of(resp["response_range"]))
    return out


def nodes_from_kvs(prefix: str, kvs: Sequence[Mapping[str, Any]]) -> list[RawNode]:
    raw_prefix = prefix.encode("utf-8")
    out = []
    for kv in kvs:
        key = unb64(kv.get("key"))
        if not key.startswith(raw_prefix):
            continue
        lease = to_int(kv.get("lease"))
        out.append(
            RawNode(
                key=key[len(raw_prefix) :].decode("utf-8", "replace"),
                value=unb64(kv.get("value")),
                version=to_int(kv.get("mod_revision")),
                session=str(lease) if lease else "",
            )
        )
    return out


def view_from_range(scope: str, prefix: str, doc: Mapping[str, Any]) -> ClusterView:
    return build_cluster_view(scope, nodes_from_kvs(prefix, kvs_of(doc)), reply_revision(doc))


# Transaction building blocks ------------------------------------------------------------------


def cmp_create(key: str, revision: int = 0) -> Json:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def cmp_mod(key: str, revision: int) -> Json:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def cmp_value(key: str, value: str) -> Json:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def cmp_lease(key: str, lease: str) -> Json:
    return {"key": b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


def op_put(key: str, value: str, lease: str | None = None) -> Json:
    req: Json = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def op_delete(key: str, prefix: bool = False) -> Json:
    req: Json = {"key": b64(key)}
    if prefix:
        req["range_end"] = b64(prefix_range_end(key))
    return {"request_delete_range": req}


def op_range(key: str) -> Json:
    return {"request_range": {"key": b64(key)}}


def linearizable_txn(compare: list[Json], success: list[Json], failure: list[Json]) -> Json:
    """The body of a txn that etcd must answer linearizably.

    etcd serves a read-only txn whose branches hold no linearizable range *locally*, without
    confirming with a quorum (``isTxnSerializable`` is true for empty branches): a compare-only txn
    would be answered by an isolated member, even a deposed raft leader, from its own stale state.
    Such a txn gets a linearizable range of its first compared key in both branches.
    """
    ops = [*success, *failure]
    if compare and not any("request_put" in op or "request_delete_range" in op for op in ops):
        probe = {"request_range": {"key": compare[0]["key"]}}
        success = [*success, probe]
        failure = [*failure, probe]
    return {"compare": compare, "success": success, "failure": failure}


def cas_compare(key: str, version: int | None) -> Json:
    """``version=None``: create only if absent; otherwise the key's mod_revision must be ``version``."""
    return cmp_create(key, 0) if version is None else cmp_mod(key, version)
