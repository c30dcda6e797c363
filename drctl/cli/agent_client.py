"""Compatibility path: the agent client lives in :mod:`drctl.agentapi.client`."""

from __future__ import annotations

from drctl.agentapi.client import *  # noqa: F403
from drctl.agentapi.client import __all__ as __all__
