"""The policy model: one document (policies/*.yaml) that says which sites exist and how to reach
them (the topology, :class:`drctl.sites.topology.Topology`), what each site must achieve (RPO/RTO
targets), how backups are taken (:class:`drctl.backup.policy.BackupPolicy`), and which DR drills
run when.

Every section reuses the model its consumer already validates with, so a topology file and the
``sites:``/``dr:`` sections of a policy are the same thing, checked the same way."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drctl.backup.policy import BackupPolicy, TimeZoneName
from drctl.backup.schedule import cron_trigger, zone
from drctl.dcs.factory import DcsSettings
from drctl.policy.source import Loc
from drctl.policy.windows import Window, in_windows, parse_window
from drctl.sites.topology import DrPolicy, SiteSpec, Topology, policy_problems

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

DrillKind = Literal["site-switchover", "backup-restore", "replica-rebuild", "site-loss"]
DESTRUCTIVE_KINDS: frozenset[str] = frozenset({"site-loss"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VerifyQuery(_Model):
    """A query run on a restored instance; ``expect`` is compared with the first column of the
    first row, as text (``expect_min`` with a number)."""

    sql: str = Field(min_length=1)
    expect: str | None = None
    expect_min: float | None = None


class DrillSpec(_Model):
    kind: DrillKind
    site: str | None = Field(default=None, description="site-switchover: the site switched to (and back from)")
    schedule: str | None = Field(default=None, description="crontab: minute hour day month weekday")
    timezone: TimeZoneName = "UTC"
    windows: list[str] = Field(default_factory=list, description="when the drill may start; empty = any time")
    destructive: bool = False
    enabled: bool = True
    probe_interval_s: float = Field(default=0.05, gt=0, le=5)
    settle_s: float = Field(default=2.0, ge=0, le=600, description="probe writes before and after the operation")
    max_lag_bytes: int | None = Field(default=None, ge=0, description="guard: refuse above (default: dr's)")
    timeout_s: float = Field(default=600.0, gt=0)
    round_trip: bool = Field(default=True, description="site-switchover: switch back to the starting site")
    verify: list[VerifyQuery] = Field(default_factory=list)
    run_as: str = Field(default="postgres", min_length=1, description="backup-restore: OS user of PostgreSQL")
    member: str | None = Field(default=None, description="replica-rebuild: the replica (default: one of them)")
    pitr: bool = Field(default=True, description="backup-restore: also restore to a point in time and check it")
    power_off: list[str] | None = Field(default=None, description="site-loss: argv that cuts the site (${site})")
    power_on: list[str] | None = Field(default=None, description="site-loss: argv that brings it back (${site})")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            drill_trigger(value)
            value = " ".join(value.split())
        return value

    def trigger(self) -> CronTrigger:
        assert self.schedule is not None
        return drill_trigger(self.schedule, self.timezone)

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for w in value:
            parse_window(w)
        return value

    def parsed_windows(self) -> list[Window]:
        return [parse_window(w) for w in self.windows]

    def allowed_at(self, at: datetime) -> bool:
        return in_windows(self.parsed_windows(), at.astimezone(zone(self.timezone)))


def drill_trigger(expr: str, timezone: str = "UTC") -> CronTrigger:
    """A crontab (minute hour day month weekday), or the same with seconds first (6 fields: a lab
    or a test may want a drill a few seconds ahead)."""
    fields = expr.split()
    if len(fields) != 6:
        return cron_trigger(expr, zone(timezone))
    second, rest = fields[0], " ".join(fields[1:])
    base = cron_trigger(rest, zone(timezone))  # validates the other five fields
    from apscheduler.triggers.cron import CronTrigger

    values = {f.name: str(f) for f in base.fields}
    try:
        return CronTrigger(
            second=second,
            minute=values["minute"],
            hour=values["hour"],
            day=values["day"],
            month=values["month"],
            day_of_week=values["day_of_week"],
            timezone=zone(timezone),
        )
    except ValueError as exc:
        raise ValueError(f"{expr!r}: seconds field: {exc}") from None


class Paths(_Model):
    state_dir: str | None = Field(default=None, description="runbook runs and drill records")
    reports_dir: str | None = Field(default=None, description="HTML/JSON reports (default: state_dir/reports)")


class Policy(_Model):
    version: Literal[1] = 1
    sites: dict[str, SiteSpec] = Field(min_length=2)
    witness: DcsSettings | None = None
    dr: DrPolicy = Field(default_factory=DrPolicy)
    backup: BackupPolicy | None = None
    drills: dict[str, DrillSpec] = Field(default_factory=dict)
    paths: Paths = Field(default_factory=Paths)
    source: str = Field(default="", exclude=True)

    def topology(self) -> Topology:
        """The cross-site topology the controller works with."""
        return Topology(sites=self.sites, witness=self.witness, policy=self.dr, source=self.source)

    def rto_target(self, site: str) -> float:
        return self.sites[site].targets.rto_seconds or self.dr.rto_seconds

    def rpo_target(self, site: str) -> int:
        t = self.sites[site].targets.max_data_loss_bytes
        return self.dr.max_data_loss_bytes if t is None else t

    def drill(self, name: str) -> DrillSpec:
        try:
            return self.drills[name]
        except KeyError:
            known = ", ".join(sorted(self.drills)) or "none"
            raise KeyError(f"{self.source}: no drill {name!r} (drills: {known})") from None


def cross_checks(policy: Policy) -> list[tuple[Loc, str]]:
    """What pydantic cannot see field by field: names that must refer to something."""
    out: list[tuple[Loc, str]] = []
    sites = sorted(policy.sites)
    for name in policy.sites:
        if not NAME_RE.match(name):
            out.append((("sites", name), "a site name is lower-case letters, digits, - and _"))
    for name, drill in policy.drills.items():
        if not NAME_RE.match(name):
            out.append((("drills", name), "a drill name is lower-case letters, digits, - and _"))
        if drill.site is not None and drill.site not in policy.sites:
            out.append((("drills", name, "site"), f"no site {drill.site!r} (sites: {', '.join(sites)})"))
        if drill.kind in DESTRUCTIVE_KINDS and not drill.destructive:
            out.append(
                (
                    ("drills", name, "destructive"),
                    f"a {drill.kind} drill stops a whole site: set `destructive: true` to say you mean it",
                )
            )
        if drill.kind == "site-loss":
            for key in ("power_off", "power_on"):
                if not getattr(drill, key):
                    out.append(
                        (("drills", name, key), "required for a site-loss drill (argv, ${site} = the site): add it")
                    )
        if drill.kind in {"site-switchover", "site-loss"} and drill.site is None:
            out.append((("drills", name, "site"), f"required for a {drill.kind} drill: add it"))
        if drill.kind == "backup-restore" and policy.backup is None:
            out.append((("drills", name, "kind"), "a backup-restore drill needs the `backup:` section"))
        if drill.windows and drill.schedule is None:
            out.append((("drills", name, "windows"), "windows without a schedule: add `schedule:` or drop them"))
    for key, problem in policy_problems(policy.sites, policy.witness, policy.dr):
        out.append((("dr", key), problem))
    if policy.backup is not None:
        for i, repo in enumerate(policy.backup.repos):
            if repo.site is not None and repo.site not in policy.sites:
                out.append((("backup", "repos", i, "site"), f"no site {repo.site!r} (sites: {', '.join(sites)})"))
    return out
