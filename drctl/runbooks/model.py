"""Runbook files (runbooks/*.yaml): variables, guards and named steps.

A step is exactly one of: ``op`` (a drctl operation), ``check`` (a condition that must hold),
``wait`` (a condition awaited with a timeout), ``confirm`` (an operator's yes), ``shell`` (a hook:
argv, env, timeout), ``note`` (text shown to the operator). Any step may carry ``done_if``: a
condition meaning "already done", checked first, so that re-running or resuming is safe.

A condition is a mapping with exactly one of ``sql``, ``site``, ``cluster``, ``lag``, ``command``;
``${name}`` in any string is a variable."""

from __future__ import annotations

import re
from string import Template
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Resolved when a run starts (and recorded, so a resumed run keeps the values it started with).
BUILTIN_VARS = {"active_site", "standby_site", "run_id", "state_dir", "drctl"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqlCondition(_Model):
    """``query``'s first column of the first row, as text, equals ``expect`` (or is a number
    >= ``expect_min``). Runs on ``dsn``, else on ``site``'s entry point (libpq environment
    variables give user and password: PGUSER, PGPASSWORD, or ~/.pgpass)."""

    query: str = Field(min_length=1)
    site: str | None = None
    dsn: str | None = None
    dbname: str = "postgres"
    expect: str | None = None
    expect_min: float | None = None

    @field_validator("expect", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        # `expect: true` / `expect: 3` in YAML mean what the query prints: True / 3
        if isinstance(value, bool | int | float):
            return str(value)
        return value

    @model_validator(mode="after")
    def _one_target(self) -> SqlCondition:
        if (self.site is None) == (self.dsn is None):
            raise ValueError("give exactly one of `site` and `dsn`")
        if self.expect is None and self.expect_min is None:
            raise ValueError("give `expect` (text) or `expect_min` (number)")
        return self


class SiteCondition(_Model):
    """What `drctl sites` shows about one site."""

    name: str
    role: Literal["active", "standby"] | None = None
    reachable: bool | None = Field(default=None, description="its DCS answers (None: either)")
    has_leader: bool | None = None
    streaming: bool | None = Field(default=None, description="its standby leader streams from the active site")


class ClusterCondition(_Model):
    """What `drctl list` shows about one site's cluster."""

    site: str
    leader: str | None = None
    not_leader: str | None = None
    all_running: bool | None = None
    min_members: int | None = Field(default=None, ge=1)
    replicas_streaming: int | None = Field(default=None, ge=0, description="at least this many")


class LagCondition(_Model):
    """The standby site's standby leader is at most ``max_bytes`` behind the active site."""

    site: str
    max_bytes: int = Field(ge=0)


class CommandCondition(_Model):
    """A program (argv, never a shell line) exits with status 0."""

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0)


class _OneOf(_Model):
    """A model that is exactly one of its ``kinds`` (the field set names what it is)."""

    kinds: ClassVar[tuple[str, ...]] = ()

    def given(self) -> list[str]:
        return [k for k in self.kinds if getattr(self, k) is not None]

    @property
    def kind(self) -> str:
        return self.given()[0]


class Condition(_OneOf):
    kinds: ClassVar[tuple[str, ...]] = ("sql", "site", "cluster", "lag", "command")
    sql: SqlCondition | None = None
    site: SiteCondition | None = None
    cluster: ClusterCondition | None = None
    lag: LagCondition | None = None
    command: CommandCondition | None = None
    negate: bool = Field(default=False, alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = self.given()
        if len(given) != 1:
            raise ValueError(f"a condition is exactly one of sql, site, cluster, lag, command (got {given or 'none'})")
        return self


OpName = Literal["switchover", "switchover-site", "promote-site", "fence-site", "reinit", "restart"]


class OpStep(_Model):
    name: OpName
    args: dict[str, Any] = Field(default_factory=dict)


class WaitStep(_Model):
    until: Condition
    timeout_s: float = Field(gt=0)
    interval_s: float = Field(default=1.0, gt=0)


class ShellStep(_Model):
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=300.0, gt=0)
    cwd: str | None = None


class Step(_OneOf):
    kinds: ClassVar[tuple[str, ...]] = ("op", "check", "wait", "confirm", "shell", "note")
    name: str
    description: str | None = None
    op: OpStep | None = None
    check: Condition | None = None
    wait: WaitStep | None = None
    confirm: str | None = None
    shell: ShellStep | None = None
    note: str | None = None
    done_if: Condition | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        kinds = self.given()
        if len(kinds) != 1:
            raise ValueError(
                f"step {self.name!r}: exactly one of op, check, wait, confirm, shell, note (got {kinds or 'none'})"
            )
        if not NAME_RE.match(self.name):
            raise ValueError(f"step name {self.name!r}: lower-case letters, digits, - and _")
        return self


class VarSpec(_Model):
    description: str | None = None
    default: str | None = None
    choices: list[str] | None = None


class Runbook(_Model):
    name: str
    description: str = ""
    vars: dict[str, VarSpec] = Field(default_factory=dict)
    guards: list[Condition] = Field(default_factory=list, description="all must hold before the first step")
    steps: list[Step] = Field(min_length=1)
    source: str = Field(default="", exclude=True)
    # the ${names} its guards and steps use, read from the file before any substitution
    references: frozenset[str] = Field(default_factory=frozenset, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Runbook:
        if not NAME_RE.match(self.name):
            raise ValueError(f"runbook name {self.name!r}: lower-case letters, digits, - and _")
        names = [s.name for s in self.steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"step names must be unique: {', '.join(dup)}")
        clash = sorted(set(self.vars) & BUILTIN_VARS)
        if clash:
            raise ValueError(f"vars: {', '.join(clash)} is built in (set when the run starts): rename it")
        return self


def referenced_vars(value: Any) -> set[str]:
    """Every ``${name}`` in a nested structure of strings, lists and mappings."""
    if isinstance(value, str):
        return set(VAR_RE.findall(value))
    if isinstance(value, dict):
        return set().union(*(referenced_vars(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(referenced_vars(v) for v in value)) if value else set()
    return set()


def substitute(value: Any, variables: dict[str, str]) -> Any:
    """``${name}`` replaced everywhere (a missing name is a KeyError; ``$$`` is a dollar)."""
    if isinstance(value, str):
        return Template(value).substitute(variables)
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(v, variables) for v in value]
    return value
