"""Cross-site verbs: `drctl sites`, `drctl switchover-site --to B`, `drctl promote-site B`.

The topology file comes from --topology, else $PGDR_TOPOLOGY. Nothing here ever promotes a
site on its own: promote-site is the operator's decision, with evidence and an audit record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from drctl.cli.errors import fail, operator_errors, path_option, register_operator_error
from drctl.cli.output import emitted, format_option, table
from drctl.common.members import lag_between
from drctl.sites.controller import (
    SiteOpError,
    abort_switchover_site,
    confirm_site,
    cross_site_lag,
    fence_site,
    promote_site,
    read_sites,
    site_standing,
    switchover_site,
    witness_record,
)
from drctl.sites.topology import Topology, TopologyError, load_topology

register_operator_error(TopologyError, SiteOpError)

topology_option = path_option("--topology", "topology_path", "Topology file (default: $PGDR_TOPOLOGY).")


def _topology(path: Path | None) -> Topology:
    chosen = path or (Path(os.environ["PGDR_TOPOLOGY"]) if os.environ.get("PGDR_TOPOLOGY") else None)
    if chosen is None:
        fail("no topology file: pass --topology FILE or set PGDR_TOPOLOGY (see policies/topology.example.yaml)")
        raise AssertionError  # unreachable
    return load_topology(chosen)


def sites_document(topology: Topology) -> dict[str, Any]:
    states = read_sites(topology)
    lags = cross_site_lag(states)
    sites = []
    for name, st in states.items():
        members = []
        if st.view is not None:
            leader_lsn = st.leader_lsn()
            for m in st.view.members:
                s = st.statuses.get(m.name)
                members.append(
                    {
                        "name": m.name,
                        "role": s.role if s is not None else m.info.role,
                        "state": s.state if s is not None else m.info.state,
                        "timeline": s.timeline if s is not None else m.info.timeline,
                        "lag_bytes": lag_between(leader_lsn, s.xlog.lsn if s is not None else None),
                        "replication_state": s.replication_state if s is not None else None,
                    }
                )
        standing, standing_reason = site_standing(st)
        leader = st.leader_status()
        sites.append(
            {
                "site": name,
                "role": st.role,
                "standing": standing,
                "standing_reason": standing_reason,
                "slot_retained_bytes": leader.site.slot_retained_bytes if leader is not None else None,
                "slot_wal_status": leader.site.slot_wal_status if leader is not None else None,
                "epoch": st.epoch,
                "follows": st.record.follows if st.record else None,
                "leader": st.leader,
                "entry_point": st.spec.entry_point,
                "dcs_error": st.error,
                "cross_site_lag_bytes": lags.get(name),
                "members": members,
            }
        )
    doc: dict[str, Any] = {"sites": sites}
    if topology.witness is not None:
        try:
            rec = witness_record(topology)
            doc["witness"] = {"active_site": rec.active_site if rec else None, "epoch": rec.epoch if rec else None}
            doc["witness"]["pending"] = bool(rec is not None and rec.pending)
        except SiteOpError as exc:
            doc["witness"] = {"error": str(exc)}
    return doc


@click.command("sites")
@topology_option
@format_option
@operator_errors
def sites_cmd(topology_path: Path | None, fmt: str) -> None:
    """Every site: DR role, epoch, leader, members and cross-site lag."""
    topology = _topology(topology_path)
    limit = topology.policy.max_slot_retention_bytes
    doc = sites_document(topology)
    if emitted(doc, fmt):
        return
    rows = []
    for s in doc["sites"]:
        lag = s["cross_site_lag_bytes"]
        head = f"{s['role']} (epoch {s['epoch']})" + (f", follows {s['follows']}" if s["follows"] else "")
        retained = s.get("slot_retained_bytes")
        if retained is not None and retained > limit:
            head += f", SLOT RETAINS {retained} bytes (> {limit}; wal_status {s.get('slot_wal_status')})"
        if s["standing"] in ("unconfirmed", "fenced"):
            # A site that may not write: say so first, with the agents' reason.
            head += f", {s['standing'].upper()}: {s['standing_reason'] or ''}"
        if s["dcs_error"]:
            rows.append((s["site"], "unreachable", "", "", "", "", s["dcs_error"][:60]))
            continue
        for m in s["members"]:
            rows.append(
                (
                    s["site"],
                    head,
                    m["name"] + (" *" if m["name"] == s["leader"] else ""),
                    m["role"],
                    m["state"],
                    "" if m["lag_bytes"] is None else m["lag_bytes"],
                    "" if lag is None or m["name"] != s["leader"] else f"{lag} bytes behind the active site",
                )
            )
            head = ""
    w = doc.get("witness")
    if w is not None:
        pending = " (pending: not yet promoted)" if w.get("pending") else ""
        shown = w.get("error") or f"site {w.get('active_site')} active at epoch {w.get('epoch')}{pending}"
        rows.append(("witness", str(shown)[:80], "", "", "", "", ""))
    table("sites (* = leader)", ["Site", "DR role", "Member", "Role", "State", "Lag (bytes)", "Cross-site"], rows)


@click.command("switchover-site")
@topology_option
@click.option("--to", "to", required=True, help="The site that becomes active.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--resume", is_flag=True, help="Complete an interrupted switchover (the same as running it again).")
@click.option("--abort", is_flag=True, help="Roll back an interrupted switchover that has not promoted the target.")
@operator_errors
def switchover_site_cmd(
    topology_path: Path | None, to: str, dry_run: bool, force: bool, resume: bool, abort: bool
) -> None:
    """Planned switchover of the active role to another site (no data loss). Every step is
    recorded (audit log, site records): an interrupted one is completed with --resume or rolled
    back with --abort."""
    topology = _topology(topology_path)
    topology.site(to)
    if resume and abort:
        raise click.UsageError("--resume and --abort exclude each other")
    if abort:
        abort_switchover_site(topology, to, say=click.echo)
        return
    if not dry_run and not force:
        switchover_site(topology, to, dry_run=True, say=click.echo)
        click.confirm(f"Switch the active site over to {to}?", abort=True)
    result = switchover_site(topology, to, dry_run=dry_run, say=click.echo)
    if result.get("result") == "done" and "timings" in result:  # a resumed one has no timings
        t = result["timings"]
        click.echo(
            f"timings: demote {t['demote_s']:.1f}s, catch-up {t['catch_up_s']:.1f}s, promote {t['promote_s']:.1f}s, "
            f"old site streaming {t['follow_s']:.1f}s, total {t['total_s']:.1f}s"
        )


@click.command("promote-site")
@topology_option
@click.argument("site")
@click.option("--confirm-old-site-down", is_flag=True, help="Attest that the old active site cannot write.")
@click.option("--reason", default=None, help="Why (recorded in the audit log with who and when).")
@click.option("--accept-data-loss", is_flag=True, help="Promote even if the estimated loss exceeds the policy.")
@click.option("--dry-run", is_flag=True)
@operator_errors
def promote_site_cmd(
    topology_path: Path | None,
    site: str,
    confirm_old_site_down: bool,
    reason: str | None,
    accept_data_loss: bool,
    dry_run: bool,
) -> None:
    """Disaster promotion of a standby site (manual only; needs evidence the old site is down)."""
    promote_site(
        _topology(topology_path),
        site,
        confirm_old_site_down=confirm_old_site_down,
        accept_data_loss=accept_data_loss,
        reason=reason,
        dry_run=dry_run,
        say=click.echo,
    )


@click.command("confirm-site")
@topology_option
@click.argument("site")
@click.option("--reason", required=True, help="Why (recorded in the audit log with who and when).")
@click.option(
    "--valid-for",
    "valid_for",
    type=click.FloatRange(min=10, max=86400),
    default=600.0,
    show_default=True,
    help="Seconds the confirmation lets a cold site's agents promote.",
)
@operator_errors
def confirm_site_cmd(topology_path: Path | None, site: str, reason: str, valid_for: float) -> None:
    """Confirm a cold, unconfirmed active site's role when its agents cannot reach any other
    site nor the witness (audited; time-bounded)."""
    confirm_site(_topology(topology_path), site, reason=reason, valid_for_s=valid_for, say=click.echo)


@click.command("fence-site")
@topology_option
@click.argument("site")
@click.option("--reason", required=True, help="Why (recorded in the audit log with who and when).")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@operator_errors
def fence_site_cmd(topology_path: Path | None, site: str, reason: str, dry_run: bool) -> None:
    """Make SITE a standby of the active site with the highest epoch (audited): for a site that
    came back with a lower epoch while it could not see the others."""
    fence_site(_topology(topology_path), site, reason=reason, dry_run=dry_run, say=click.echo)


COMMANDS = [sites_cmd, switchover_site_cmd, promote_site_cmd, confirm_site_cmd, fence_site_cmd]
