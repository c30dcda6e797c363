"""Compatibility path: the agent client lives in :mod:`drctl.agentapi.client`."""

from __future__ import annotations

from drctl.agentapi.client import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    AgentApi,
    AgentClient,
    AgentReply,
    AgentUnreachable,
    RestAuth,
    basic_auth_header,
    decode_reply,
    join_url,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "AgentApi",
    "AgentClient",
    "AgentReply",
    "AgentUnreachable",
    "RestAuth",
    "basic_auth_header",
    "decode_reply",
    "join_url",
]
