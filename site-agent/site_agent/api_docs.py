"""What the REST API sends and accepts, apart from the serving: responses and JSON, the limits on
a request body and its fields, and the ``/cluster`` and ``/history`` documents (built with the
same member rules as the CLI, drctl.common.members)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drctl.common.members import member_lag, member_role
from drctl.dcs.base import ClusterView
from drctl.pg.conninfo import conninfo_address

MAX_JSON_DEPTH = 64
JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclass
class Response:
    code: int
    body: bytes = b""
    content_type: str = TEXT_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


def json_response(code: int, doc: Any) -> Response:
    body = json.dumps(doc, default=_json_default, separators=(",", ":")).encode()
    return Response(code, body, JSON_CONTENT_TYPE)


def text_response(code: int, message: str) -> Response:
    return Response(code, (message.rstrip("\n") + "\n").encode(), TEXT_CONTENT_TYPE)


def daemon_response(result: tuple[int, str]) -> Response:
    """The daemon's (code, message). A message that is a JSON document is sent as JSON."""
    code, message = result
    if not isinstance(code, int) or not 100 <= code <= 599:
        raise ValueError(f"daemon returned an invalid status code: {code!r}")
    text = str(message)
    if text[:1] in ("{", "["):
        try:
            return json_response(code, json.loads(text))
        except ValueError:
            pass
    return text_response(code, text)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (brackets inside strings ignored),
    checked before parsing: json.loads recurses once per level."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw))
    depth = deepest = 0
    for b in brackets:
        if b in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        else:
            depth -= 1
    return deepest


class BadRequest(Exception):
    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object"}


def check_fields(body: Mapping[str, Any], spec: Mapping[str, tuple[type, ...]], what: str) -> dict[str, Any]:
    """Reject unknown fields and wrong types; ``None`` is accepted for every field."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise BadRequest(f"{what}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(spec))})")
    out: dict[str, Any] = {}
    for key, types in spec.items():
        if key not in body or body[key] is None:
            continue
        value = body[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise BadRequest(f"{what}: field {key!r} must be {names}")
        out[key] = value
    return out


def parse_timestamp(text: str, what: str, now: datetime) -> datetime:
    """ISO 8601 with a timezone, not in the past (422, as Patroni does)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{what}: unable to parse timestamp {text!r} (ISO 8601 expected)") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise BadRequest(f"{what}: timestamp {text!r} must include a timezone")
    if when < now:
        raise BadRequest(f"{what}: cannot schedule in the past ({text})", code=422)
    return when


def nonempty(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def cluster_document(view: ClusterView) -> dict[str, Any]:
    """GET /cluster: the members as the DCS knows them, with Patroni's field names."""
    leader = view.leader.name if view.leader else None
    config = dict(view.config.data) if view.config else {}
    members = []
    for m in sorted(view.members, key=lambda m: m.name):
        info = m.info
        doc: dict[str, Any] = {
            "name": m.name,
            "role": member_role(view, m),
            "state": info.state,
            "api_url": info.api_url,
            "timeline": info.timeline,
            "tags": dict(info.tags),
        }
        address = conninfo_address(info.conn_url)
        if address is not None:
            doc["host"] = address[0]
            if address[1] is not None:
                doc["port"] = address[1]
        if info.received_lsn is not None:
            doc["received_lsn"] = info.received_lsn
        if info.replayed_lsn is not None:
            doc["replayed_lsn"] = info.replayed_lsn
        if m.name != leader:
            lag = member_lag(view, m)
            doc["lag"] = lag if lag is not None else "unknown"
        if info.version:
            doc["version"] = info.version
        members.append(doc)
    out: dict[str, Any] = {
        "scope": view.scope,
        "leader": leader,
        "members": members,
        "pause": bool(config.get("pause")),
    }
    if view.failover is not None and view.failover.scheduled_at:
        out["scheduled_switchover"] = {
            "at": view.failover.scheduled_at,
            "from": view.failover.leader,
            "to": view.failover.candidate,
        }
    if view.site is not None:
        out["site"] = {"role": view.site.role, "epoch": view.site.epoch, "follows": view.site.follows}
    if view.failsafe is not None:
        out["failsafe"] = dict(view.failsafe)
    return out


def history_document(view: ClusterView) -> list[list[Any]]:
    return [e.to_list() for e in view.history.entries] if view.history else []
