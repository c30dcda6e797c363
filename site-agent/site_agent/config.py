"""Compatibility path: the agent configuration lives in :mod:`drctl.agentconfig` (both programs
read it). Agent modules may keep importing its names from here."""

from __future__ import annotations

from drctl.agentconfig import *  # noqa: F403
from drctl.agentconfig import __all__ as __all__
