"""The network of the multi-host lab: one network namespace per host, one bridge per site, the
sites joined through a router namespace over userspace WAN links (drctl.lab.wanrelay).

Layout, for a lab whose namespaces all start with ``<prefix>-`` (unique per lab, so that several
labs on one machine never collide):

    <prefix>-gw-<site>   the site's gateway: bridge ``br0`` (10.77.<k>.1/24, the site's LAN) and
                         TUN ``wan0`` (10.78.<k>.2, point to point with the router)
    <prefix>-rt          the router: TUN ``w-<site>`` per site (10.78.<k>.1), forwarding
    <prefix>-<host>      a host: veth ``eth0`` (10.77.<k>.<n>/24) whose other end is a port of its
                         site's bridge; default route through the gateway

Nothing is created in the root namespace (no address, route, rule or interface): the lab's
addresses exist only inside its namespaces. Faults are nftables rules inside namespaces and cut
both directions at once (a host's rule drops what it sends and what it receives; the router's
drops forwarding both ways between two sites)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drctl.lab.etcd import LabError
from drctl.lab.nsutil import ip, list_netns, run
from drctl.lab.procs import Supervisor
from drctl.safefs import write_atomic

FABRIC_FILE = "netns.json"
SPECIAL_SITES = {"w": 100, "o": 101}  # the witness's location and the operators' network


def site_index(site: str) -> int:
    if site in SPECIAL_SITES:
        return SPECIAL_SITES[site]
    if len(site) == 1 and "a" <= site <= "z":
        return ord(site) - ord("a") + 1
    raise LabError(f"site {site!r}: the netns lab names sites a..z (plus w for the witness, o for operators)")


def lan_address(site: str, n: int) -> str:
    return f"10.77.{site_index(site)}.{n}"


@dataclass
class Host:
    name: str  # short, unique in the lab: a1, a-etcd1, a-hap, w-etcd1, ops
    site: str
    addr: str
    ns: str
    port: str  # its veth end on the site bridge (in the gateway namespace)


@dataclass
class Fabric:
    prefix: str
    lab_dir: str
    sites: list[str] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    delay_ms: dict[str, float] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)  # created, in order
    generation: int = 0  # of the WAN settings, acknowledged by the relay in its log

    # --- names ----------------------------------------------------------------------------------
    @property
    def router(self) -> str:
        return f"{self.prefix}-rt"

    def gateway(self, site: str) -> str:
        return f"{self.prefix}-gw-{site}"

    @property
    def relay_config(self) -> Path:
        return Path(self.lab_dir) / "wan.json"

    @property
    def relay_name(self) -> str:
        return "lab-wanrelay"

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise LabError(f"no host {name!r} in the netns lab (hosts: {', '.join(sorted(self.hosts))})") from None

    # --- persistence ----------------------------------------------------------------------------
    def save(self) -> None:
        write_atomic(Path(self.lab_dir) / FABRIC_FILE, json.dumps(asdict(self), indent=1), 0o644)

    @classmethod
    def load(cls, lab_dir: Path) -> Fabric | None:
        path = Path(lab_dir) / FABRIC_FILE
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
            doc["hosts"] = {k: Host(**v) for k, v in doc["hosts"].items()}
            return cls(**doc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabError(
                f"{path} is unreadable ({exc}): delete the lab's namespaces by hand (`ip netns list`, "
                "names starting with pgdr and 6 hex digits)"
            ) from exc

    # --- building -------------------------------------------------------------------------------
    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        self.save()  # recorded before anything else is put in it: `lab down` removes it
        ip("link", "set", "lo", "up", ns=ns)

    def create(self, sites: list[str]) -> Fabric:
        """The router and one gateway (bridge + WAN TUN) per site; hosts come with add_host."""
        if list_netns(f"{self.prefix}-"):
            raise LabError(f"network namespaces {self.prefix}-* exist already: `drctl lab down` the lab using them")
        self._add_ns(self.router)
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=self.router)
        self._nft(self.router, _ROUTER_TABLE)
        for site in sites:
            self.add_site(site)
        return self

    def add_site(self, site: str) -> None:
        k = site_index(site)
        gw = self.gateway(site)
        self._add_ns(gw)
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=gw)
        ip("link", "add", "br0", "type", "bridge", ns=gw)
        ip("addr", "add", f"10.77.{k}.1/24", "dev", "br0", ns=gw)
        ip("link", "set", "br0", "up", ns=gw)
        # The WAN wire: a TUN at each end, joined by the relay process.
        rt_if = f"w-{site}"
        ip("tuntap", "add", "dev", "wan0", "mode", "tun", ns=gw)
        ip("tuntap", "add", "dev", rt_if, "mode", "tun", ns=self.router)
        ip("addr", "add", f"10.78.{k}.2/32", "peer", f"10.78.{k}.1/32", "dev", "wan0", ns=gw)
        ip("addr", "add", f"10.78.{k}.1/32", "peer", f"10.78.{k}.2/32", "dev", rt_if, ns=self.router)
        ip("link", "set", "wan0", "up", ns=gw)
        ip("link", "set", rt_if, "up", ns=self.router)
        ip("route", "add", "default", "dev", "wan0", ns=gw)
        ip("route", "add", f"10.77.{k}.0/24", "dev", rt_if, ns=self.router)
        self.sites.append(site)
        self.delay_ms.setdefault(site, 0.0)
        self.loss.setdefault(site, 0.0)
        self.save()

    def add_host(self, name: str, site: str, n: int) -> Host:
        """A host namespace on ``site``'s LAN with address 10.77.<k>.<n>."""
        if name in self.hosts:
            raise LabError(f"host {name!r} exists already")
        if site not in self.sites:
            self.add_site(site)
        ns = f"{self.prefix}-{name}"
        port = f"v-{name}"[:15]
        host = Host(name, site, lan_address(site, n), ns, port)
        self._add_ns(ns)
        gw = self.gateway(site)
        ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=gw)
        ip("link", "set", port, "master", "br0", ns=gw)
        ip("link", "set", port, "up", ns=gw)
        ip("addr", "add", f"{host.addr}/24", "dev", "eth0", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)
        ip("route", "add", "default", "via", f"10.77.{site_index(site)}.1", ns=ns)
        self._nft(ns, _HOST_TABLE)
        self.hosts[name] = host
        self.save()
        return host

    def _nft(self, ns: str, script: str) -> None:
        run(["nft", "-f", "-"], ns=ns, input=script)

    # --- the WAN ----------------------------------------------------------------------------------
    def write_relay_config(self) -> None:
        doc = {
            "links": {s: {"rt_if": f"w-{s}", "gw_ns": self.gateway(s)} for s in self.sites},
            "delay_ms": self.delay_ms,
            "loss": self.loss,
            "generation": self.generation,
        }
        write_atomic(self.relay_config, json.dumps(doc, indent=1), 0o644)

    def start_relay(self, sup: Supervisor) -> None:
        self.write_relay_config()
        from drctl.lab.nsutil import ns_argv

        log = Path(self.lab_dir) / "wanrelay.log"
        seen = log.stat().st_size if log.exists() else 0

        sup.spawn(
            self.relay_name,
            [*ns_argv(self.router), sys.executable, "-m", "drctl.lab.wanrelay", str(self.relay_config)],
            role="wanrelay",
            log=log,
        )
        # Ready once it holds every TUN (before, packets to the WAN are dropped).
        deadline = time.monotonic() + 15.0
        while "links up" not in log.read_text()[seen:]:
            rec = sup.record(self.relay_name)
            if rec is None or not rec.alive() or time.monotonic() > deadline:
                raise LabError(f"the WAN relay did not start: see {log}")
            time.sleep(0.05)

    def set_wan(
        self, sup: Supervisor, delay_ms: dict[str, float] | None = None, loss: dict[str, float] | None = None
    ) -> None:
        """Change links' one-way delays (ms) and loss probabilities now (the relay re-reads them)."""
        for site, d in (delay_ms or {}).items():
            self._check_site(site)
            self.delay_ms[site] = float(d)
        for site, p in (loss or {}).items():
            self._check_site(site)
            if not 0.0 <= float(p) <= 1.0:
                raise LabError(f"loss for site {site}: {p} is not a probability between 0 and 1")
            self.loss[site] = float(p)
        self.generation += 1
        self.write_relay_config()
        self.save()
        if not sup.send_signal(self.relay_name, signal.SIGHUP, group=False):
            raise LabError("the WAN relay is not running: see wanrelay.log in the lab directory")
        # Return once the relay applies them: a packet sent after this call sees the new WAN.
        log = Path(self.lab_dir) / "wanrelay.log"
        deadline = time.monotonic() + 10.0
        while f"applied generation {self.generation}:" not in log.read_text():
            if time.monotonic() > deadline:
                raise LabError(f"the WAN relay did not apply the new settings within 10 s: see {log}")
            time.sleep(0.02)

    def set_site_latency(self, sup: Supervisor, one_way_ms: float, sites: list[str] | None = None) -> None:
        """One-way latency ``one_way_ms`` between any two of ``sites`` (default: every site and the
        witness; the operators' network stays at 0): half on each site's link."""
        targets = sites or [s for s in self.sites if s != "o"]
        self.set_wan(sup, delay_ms={s: one_way_ms / 2.0 for s in targets})

    def _check_site(self, site: str) -> None:
        if site not in self.sites:
            raise LabError(f"no site {site!r} in the netns lab (sites: {', '.join(self.sites)})")

    # --- faults -------------------------------------------------------------------------------
    def cut(self, host: str, peers: list[str] | None = None) -> None:
        """Cut ``host`` from ``peers`` (host names or CIDRs; None: from everything), both ways:
        its nftables rules drop every packet it sends to them and every packet from them."""
        h = self.host(host)
        targets = ["0.0.0.0/0"] if peers is None else [self._addr(p) for p in peers]
        if targets:
            run(["nft", "add", "element", "inet", "pgdr", "cut", "{ " + ", ".join(targets) + " }"], ns=h.ns)

    def heal(self, host: str) -> None:
        run(["nft", "flush", "set", "inet", "pgdr", "cut"], ns=self.host(host).ns)

    def _addr(self, peer: str) -> str:
        return peer if peer[0].isdigit() else self.host(peer).addr

    def cut_sites(self, a: str, b: str, group: str = "wan") -> None:
        """No packet between sites ``a`` and ``b`` either way (the router drops them). ``group``
        names the cut for heal_sites: the WAN's, or e.g. one site's link to the witness, which
        heals on its own."""
        self._check_site(a)
        self._check_site(b)
        chain = self._cut_chain(group)
        for x, y in ((a, b), (b, a)):
            run(
                ["nft", "add", "rule", "inet", "pgdr", chain, "iifname", f"w-{x}", "oifname", f"w-{y}", "drop"],
                ns=self.router,
            )

    def heal_sites(self, group: str = "wan") -> None:
        if group == "wan":
            run(["nft", "flush", "chain", "inet", "pgdr", "wan"], ns=self.router)
        else:  # a group never cut has no chain yet
            run(["nft", "flush", "chain", "inet", "pgdr", f"cut_{group}"], ns=self.router, check=False)

    def _cut_chain(self, group: str) -> str:
        if group == "wan":
            return "wan"
        if not group.replace("_", "").isalnum():
            raise LabError(f"cut group {group!r}: letters, digits and _ only")
        chain = f"cut_{group}"
        self._nft(
            self.router, f"add chain inet pgdr {chain} {{ type filter hook forward priority 0; policy accept; }}\n"
        )
        return chain

    def cut_site(self, site: str) -> None:
        """``site`` from every other site (the witness and the operators' network included)."""
        for other in self.sites:
            if other != site:
                self.cut_sites(site, other)

    # --- teardown -----------------------------------------------------------------------------
    def destroy(self) -> list[str]:
        """Delete every namespace of the lab (their interfaces go with them). Call once no process
        runs in them. Returns the namespaces deleted."""
        gone = []
        for ns in [*reversed(self.namespaces), *list_netns(f"{self.prefix}-")]:
            if ns in gone or not (Path("/run/netns") / ns).exists():
                continue
            # TUN devices are deleted explicitly: a device the kernel cannot delete with its
            # namespace would be moved to the root namespace.
            if ns == self.router or ns.startswith(f"{self.prefix}-gw-"):
                for dev in ip("-o", "link", "show", "type", "tun", ns=ns, check=False).splitlines():
                    name = dev.split(":")[1].strip().split("@")[0]
                    ip("link", "del", name, ns=ns, check=False)
            ip("netns", "del", ns)
            gone.append(ns)
        return gone


_HOST_TABLE = """
table inet pgdr {
  set cut { type ipv4_addr; flags interval; }
  chain input { type filter hook input priority 0; policy accept; iifname "eth0" ip saddr @cut drop; }
  chain output { type filter hook output priority 0; policy accept; oifname "eth0" ip daddr @cut drop; }
}
"""

_ROUTER_TABLE = """
table inet pgdr {
  chain wan { type filter hook forward priority 0; policy accept; }
}
"""


def new_prefix() -> str:
    """``pgdr`` and 6 random hex digits: namespace names no other lab on this machine uses."""
    return f"pgdr{os.urandom(3).hex()}"


def fabric_summary(f: Fabric) -> dict[str, Any]:
    return {
        "prefix": f.prefix,
        "router": f.router,
        "hosts": {h.name: {"ns": h.ns, "addr": h.addr, "site": h.site} for h in f.hosts.values()},
        "wan_delay_ms": f.delay_ms,
        "wan_loss": f.loss,
    }
