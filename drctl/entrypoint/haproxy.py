"""A production HAProxy configuration for one site, and the runtime-API commands that switch it
over at once when the site's leader changes (pure: text in, text out)."""

from __future__ import annotations

from dataclasses import dataclass

from drctl.entrypoint.members import Backend, _bracket


@dataclass(frozen=True)
class HaproxyOptions:
    site: str
    bind_rw: str = "*:5000"  # read-write: the node answering /primary
    bind_ro: str = "*:5001"  # read-only: nodes answering /replica (the leader too when none does)
    stats_socket: str = "/run/haproxy/pgdr-admin.sock"  # runtime API: `drctl entrypoint watch`
    # pgdr's own figures: a check every second; a role change is pushed by the watcher anyway.
    inter_ms: int = 1000
    fall: int = 2
    rise: int = 1
    check_timeout_ms: int = 1000
    ca_file: str | None = None  # agents on https: verify their certificates
    client_pem: str | None = None  # agents that require client certificates (mTLS)

    def rw_backend(self) -> str:
        return f"{self.site}_rw"

    def ro_backend(self) -> str:
        return f"{self.site}_ro"


def _server(b: Backend, opts: HaproxyOptions) -> str:
    check = f"check port {b.api_port}"
    if b.api_host != b.host:
        check = f"check addr {_bracket(b.api_host)} port {b.api_port}"
    if b.api_https:
        check += f" check-ssl verify required ca-file {opts.ca_file}" if opts.ca_file else " check-ssl verify none"
        if opts.client_pem:
            check += f" crt {opts.client_pem}"
    return f"  server {b.name} {b.address} {check}"


def render(backends: list[Backend], opts: HaproxyOptions) -> str:
    """The whole configuration. Servers are named after the members, so that the runtime API can
    address them; their health checks are the agents' Patroni-compatible endpoints, which stay the
    source of truth if the watcher is not running."""
    servers = "\n".join(_server(b, opts) for b in backends) or "  # no member has published its address yet"
    default_server = (
        f"  default-server inter {opts.inter_ms}ms fastinter 250ms downinter {opts.inter_ms}ms "
        f"fall {opts.fall} rise {opts.rise} on-marked-down shutdown-sessions"
    )
    return f"""# Rendered by `drctl entrypoint haproxy --site {opts.site}`; `drctl entrypoint watch` keeps it current.
global
  maxconn 1000
  stats socket {opts.stats_socket} mode 600 level admin expose-fd listeners

defaults
  mode tcp
  # No retries: HAProxy waits up to a second before retrying the same server, which is what a
  # demoted primary is until the watcher (or the checks) take it out; a client reconnects sooner.
  retries 0
  timeout connect 2s
  timeout client 30m
  timeout server 30m
  timeout check {opts.check_timeout_ms}ms

listen {opts.rw_backend()}
  bind {opts.bind_rw}
  option httpchk OPTIONS /primary
  http-check expect status 200
{default_server}
{servers}

listen {opts.ro_backend()}
  bind {opts.bind_ro}
  balance leastconn
  option httpchk OPTIONS /replica
  http-check expect status 200
{default_server}
{servers}
"""


def switch_commands(backends: list[Backend], opts: HaproxyOptions) -> list[str]:
    """Runtime-API commands for the read-write backend after a leader change: the new leader is up
    and every other member down at once, and sessions to a former leader are cut. Only the health
    state is forced. The new leader's checks are paused: its agent answers /primary one cycle
    after the promotion, and checks failing meanwhile would take it down again; the watcher
    resumes them (:func:`resume_checks`) once /primary answers, or after a bound, so a watcher
    that is wrong or gone never pins traffic to the wrong node for long."""
    rw = opts.rw_backend()
    cmds = []
    for b in backends:
        if b.leader:
            cmds += [f"disable health {rw}/{b.name}", f"set server {rw}/{b.name} health up"]
        else:
            cmds += [
                f"enable health {rw}/{b.name}",
                f"set server {rw}/{b.name} health down",
                f"shutdown sessions server {rw}/{b.name}",
            ]
    return cmds


def resume_checks(leader: Backend, opts: HaproxyOptions) -> str:
    return f"enable health {opts.rw_backend()}/{leader.name}"
