"""The network-namespace lab: an "internet" and home networks behind real NAT routers, built
with `ip netns`, veth pairs, iptables and nftables, for the NAT tests and tools/bench_nat.py.

Layout (every name carries the lab's suffix, <sfx> = the creating process's pid, "x" and a
random token, so parallel or leftover labs never collide; `remove_leftovers` removes the
namespaces of labs whose process is gone, never those of a lab still running):

    gpn<sfx>-inet   bridge br0 198.18.0.1/24  (198.18.0.0/15 is reserved for benchmarks: no
                    real network uses it; the bootstrap node and internet clients live here)
                    and 100.128.0.1/24 (for IGD routers, see IGD_SUBNET), routing between them
    gpn<sfx>-i<k>   an extra internet host at 198.18.0.<1+k> (a client with a public address)
    gpn<sfx>-r<n>   router of home n: wan 198.18.0.<10+n> (100.128.0.<10+n> for `upnp`) on
                    br0, lan 10.<n>.0.1/24, NAT rules
    gpn<sfx>-h<n>   host of home n: eth0 10.<n>.0.2/24, default route via its router

veth ends are created directly inside their namespaces, so nothing is left in the root
namespace and removing the namespaces removes every link. NAT behaviours (`NAT_KINDS`):

    full-cone           SNAT keeping the port + DNAT of all inbound to the host (a DMZ host)
    address-restricted  nftables: SNAT keeping the port; inbound reaches the host only from
                        addresses the host sent to (a dynamic set)
    port-restricted     MASQUERADE: Linux keeps the port, conntrack filters by address+port
    symmetric           MASQUERADE --random-fully: a new port per destination
    upnp                port-restricted (iptables-legacy, which miniupnpd's libiptc edits) plus
                        Debian's miniupnpd on the LAN side: a real UPnP-IGD (and NAT-PMP/PCP)
    natpmp              the same with miniupnpd's UPnP off: NAT-PMP/PCP only (not in NAT_KINDS,
                        the matrix's list: tests/netns/test_natpmp.py builds it)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import attrs

from tests.netns.lab_process import LabProcess

PREFIX = "gpn"
INTERNET_IP = "198.18.0.1"
# miniupnpd refuses to map ports while its WAN address is private or reserved (198.18.0.0/15
# included, and Debian's 2.3.1 has no option to override it), so IGD routers sit on a second
# subnet of the lab's internet. Any address is safe here: the internet namespace has no link
# out of the lab, and nothing outside it can reach or be reached at these addresses.
IGD_SUBNET = "100.128.0"
NAT_KINDS = ("full-cone", "address-restricted", "port-restricted", "symmetric", "upnp")
IGD_KINDS = ("upnp", "natpmp")  # routers running miniupnpd
MINIUPNPD = "/usr/sbin/miniupnpd"
COMMAND_TIMEOUT_S = 20.0
MINIUPNPD_START_S = 15.0
BRIDGE_MAC = "02:67:70:6e:00:01"  # locally administered: the internet bridge's own


_SYSCTL_ROUTER = (
    "echo 1 > /proc/sys/net/ipv4/ip_forward && "
    "echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects && "
    "echo 0 > /proc/sys/net/ipv4/conf/br0/send_redirects"
)


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and its output."""


@attrs.frozen
class Home:
    """One home network: a router doing *nat* and a host behind it."""

    index: int
    nat: str
    router_ns: str
    host_ns: str
    wan_ip: str

    @property
    def gateway_ip(self) -> str:
        return f"10.{self.index}.0.1"

    @property
    def host_ip(self) -> str:
        return f"10.{self.index}.0.2"


@attrs.frozen
class InternetHost:
    """A machine on the lab's internet with a public address and no NAT (e.g. a client)."""

    ns: str
    ip: str


def unavailable_reason(nat_kinds: Sequence[str] = ()) -> str | None:
    """Why the lab cannot run here (one line), or None when it can."""
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        return "`ip netns` does not work here"
    needs = {"iptables": "iptables", "iptables-legacy": "iptables"}
    if "address-restricted" in nat_kinds:
        needs["nft"] = "nftables"
    if set(IGD_KINDS) & set(nat_kinds):
        needs[MINIUPNPD] = "miniupnpd-iptables"
    for tool, package in needs.items():
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt package {package}; tools/run-tests.sh installs it)"
    return None


def _owner_alive(name: str, prefix: str) -> bool:
    """Whether the process that created lab namespace *name* still runs."""
    pid_text = name[len(prefix) :].split("x", 1)[0]
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete the namespaces of labs whose creating process is gone (a crashed run's)."""
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
    ).stdout
    removed = []
    for line in listed.splitlines():
        name = line.split(" ", 1)[0]
        if name.startswith(prefix) and "-" in name and not _owner_alive(name, prefix):
            _kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


def _kill_namespace_processes(ns: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), 9)


class Lab:
    """The namespaces of one lab run; use `open_lab()` so that they are removed at the end."""

    def __init__(self, work_dir: Path) -> None:
        self.token = secrets.token_hex(3)
        self.suffix = f"{os.getpid()}x{self.token}"
        self.name = PREFIX + self.suffix
        self.work_dir = work_dir
        self.internet_ns = f"{self.name}-inet"
        self.homes: list[Home] = []
        self.internet_hosts: list[InternetHost] = []
        self.namespaces: list[str] = []
        self.processes: list[LabProcess] = []

    # --- commands ------------------------------------------------------------------------------

    def run(
        self,
        ns: str,
        *args: str,
        timeout: float = COMMAND_TIMEOUT_S,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace *ns*, output captured; LabError if it fails."""
        cmd = ["ip", "netns", "exec", ns, *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{' '.join(cmd)} ran past {timeout:g} s") from exc
        if check and done.returncode != 0:
            raise LabError(
                f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[:2000]}"
            )
        return done

    def start(
        self,
        ns: str,
        args: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        stop_timeout_s: float = 20.0,
        merge_stderr: bool = False,
    ) -> LabProcess:
        """Start a process inside *ns* (stdout lines queued, stderr to `<work_dir>/<name>.log`);
        it is stopped when the lab closes, if it has not been already."""
        proc = LabProcess(
            ["ip", "netns", "exec", ns, *args],
            self.work_dir / f"{name}.log",
            env=env,
            stop_timeout_s=stop_timeout_s,
            merge_stderr=merge_stderr,
        )
        self.processes.append(proc)
        return proc

    # --- building --------------------------------------------------------------------------------

    def _add_namespace(self, ns: str) -> None:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=10)
        self.namespaces.append(ns)
        self.run(ns, "ip", "link", "set", "lo", "up")

    def build_internet(self) -> None:
        ns = self.internet_ns
        self._add_namespace(ns)
        # A fixed MAC: a bridge without one takes its lowest port's, so a home added later with a
        # lower one changed the gateway's MAC under every host that had it cached, and frames
        # to the old MAC are dropped until their neighbour entries time out (seconds: the
        # `upnp` home, routed through here, lost everything; docs/reachability.md).
        self.run(ns, "ip", "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge")
        self.run(ns, "ip", "addr", "add", f"{INTERNET_IP}/24", "dev", "br0")
        self.run(ns, "ip", "addr", "add", f"{IGD_SUBNET}.1/24", "dev", "br0")
        self.run(ns, "ip", "link", "set", "br0", "up")
        # The internet routes between its two subnets (homes on one reach IGD routers on the
        # other) and sends no redirects, so every home-to-home packet passes here.
        self.run(ns, "sh", "-c", _SYSCTL_ROUTER)

    def add_internet_host(self) -> InternetHost:
        """A namespace on the internet's bridge at 198.18.0.<2+k>: a peer with a public address
        that is not the internet namespace's own (whose address NATed hosts already talk to)."""
        k = len(self.internet_hosts) + 1
        host = InternetHost(f"{self.name}-i{k}", f"198.18.0.{1 + k}")
        self._add_namespace(host.ns)
        self._veth(host.ns, "eth0", self.internet_ns, f"i{k}")
        self.run(self.internet_ns, "ip", "link", "set", f"i{k}", "master", "br0")
        self.run(self.internet_ns, "ip", "link", "set", f"i{k}", "up")
        self.run(host.ns, "ip", "addr", "add", f"{host.ip}/24", "dev", "eth0")
        self.run(host.ns, "ip", "link", "set", "eth0", "up")
        self.run(host.ns, "ip", "route", "add", "default", "via", INTERNET_IP)
        self.internet_hosts.append(host)
        return host

    def add_home(self, nat: str) -> Home:
        """A router doing *nat* (one of NAT_KINDS) and a host behind it."""
        if nat not in _NAT_SETUP:
            raise ValueError(f"unknown NAT kind {nat!r}; one of {', '.join(_NAT_SETUP)}")
        n = len(self.homes) + 1
        subnet = IGD_SUBNET if nat in IGD_KINDS else INTERNET_IP.rsplit(".", 1)[0]
        wan_ip = f"{subnet}.{10 + n}"
        home = Home(n, nat, f"{self.name}-r{n}", f"{self.name}-h{n}", wan_ip)
        r, h = home.router_ns, home.host_ns
        self._add_namespace(r)
        self._add_namespace(h)
        # WAN: router's "wan" <-> "h<n>" on the internet's bridge.
        self._veth(r, "wan", self.internet_ns, f"h{n}")
        self.run(self.internet_ns, "ip", "link", "set", f"h{n}", "master", "br0")
        self.run(self.internet_ns, "ip", "link", "set", f"h{n}", "up")
        self.run(r, "ip", "addr", "add", f"{home.wan_ip}/24", "dev", "wan")
        self.run(r, "ip", "link", "set", "wan", "up")
        self.run(r, "ip", "route", "add", "default", "via", f"{subnet}.1")
        # LAN: router's "lan" <-> host's "eth0".
        self._veth(r, "lan", h, "eth0")
        self.run(r, "ip", "addr", "add", f"{home.gateway_ip}/24", "dev", "lan")
        self.run(r, "ip", "link", "set", "lan", "up")
        self.run(h, "ip", "addr", "add", f"{home.host_ip}/24", "dev", "eth0")
        self.run(h, "ip", "link", "set", "eth0", "up")
        self.run(h, "ip", "route", "add", "default", "via", home.gateway_ip)
        self.run(r, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        _NAT_SETUP[nat](self, home)
        self.homes.append(home)
        return home

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        cmd = ["ip", "link", "add", name_a, "netns", ns_a, "type", "veth"]
        cmd += ["peer", "name", name_b, "netns", ns_b]
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)

    def start_miniupnpd(self, home: Home, *, upnp: bool = True) -> LabProcess:
        """miniupnpd on *home*'s router, listening on its LAN, editing its iptables-legacy
        chains (created by the `upnp` NAT setup); NAT-PMP and PCP (port 5351) always, UPnP
        (SSDP, SOAP) when *upnp*. Its lease file lists the mappings it holds."""
        conf = self.work_dir / f"miniupnpd-{home.index}.conf"
        conf.write_text(
            "\n".join(
                [
                    "ext_ifname=wan",
                    f"ext_ip={home.wan_ip}",
                    "listening_ip=lan",
                    "port=0",
                    f"enable_upnp={'yes' if upnp else 'no'}",
                    f"lease_file={self.work_dir / f'miniupnpd-{home.index}.leases'}",
                    "enable_natpmp=yes",
                    "secure_mode=yes",
                    "system_uptime=no",
                    "notify_interval=60",
                    "clean_ruleset_interval=600",
                    f"uuid=3fd1c0de-0000-4000-8000-{self.token}{home.index:06d}",
                    "allow 1024-65535 10.0.0.0/8 1024-65535",
                    "deny 0-65535 0.0.0.0/0 0-65535",
                    "",
                ]
            )
        )
        pid_file = self.work_dir / f"miniupnpd-{home.index}.pid"
        daemon = self.start(
            home.router_ns,
            [MINIUPNPD, "-d", "-f", str(conf), "-P", str(pid_file)],
            name=f"miniupnpd-{home.index}",
            stop_timeout_s=5.0,
            merge_stderr=True,
        )
        # Its last start-up line: from here on it answers SSDP searches and SOAP calls.
        daemon.wait_line(lambda line: "Listening for NAT-PMP" in line, MINIUPNPD_START_S)
        return daemon

    # --- tearing down ----------------------------------------------------------------------------

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop()
        for ns in reversed(self.namespaces):
            _kill_namespace_processes(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.namespaces.clear()


@contextlib.contextmanager
def open_lab(work_dir: Path, nat_kinds: Sequence[str] = ()) -> Iterator[Lab]:
    """An internet namespace and one home per entry of *nat_kinds*; everything is removed at
    the end, also when the body fails."""
    remove_leftovers()
    lab = Lab(work_dir)
    try:
        lab.build_internet()
        for nat in nat_kinds:
            lab.add_home(nat)
        yield lab
    finally:
        lab.close()


# --- NAT behaviours ----------------------------------------------------------------------------


def _forward_policy(lab: Lab, home: Home, iptables: str) -> None:
    """A router's forwarding: LAN out freely, replies back, nothing else unless a rule says.
    An unsolicited SYN to the router itself is dropped, not answered with a reset ("stealth",
    as most home routers do): a reset would kill the peer's half of a TCP hole punch."""
    r = home.router_ns
    lab.run(r, iptables, "-A", "INPUT", "-i", "wan", "-p", "tcp", "--syn", "-j", "DROP")
    lab.run(r, iptables, "-P", "FORWARD", "DROP")
    lab.run(r, iptables, "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT")
    lab.run(
        r,
        iptables,
        "-A",
        "FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    )


def _full_cone(lab: Lab, home: Home) -> None:
    r = home.router_ns
    _forward_policy(lab, home, "iptables")
    lab.run(r, "iptables", "-A", "FORWARD", "-i", "wan", "-o", "lan", "-j", "ACCEPT")
    lab.run(
        r,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "wan",
        "-j",
        "SNAT",
        "--to-source",
        home.wan_ip,
    )
    lab.run(
        r,
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        "wan",
        "-j",
        "DNAT",
        "--to-destination",
        home.host_ip,
    )


def _address_restricted(lab: Lab, home: Home) -> None:
    ruleset = f"""
table ip gpunat {{
    set contacted {{ type ipv4_addr; flags dynamic,timeout; timeout 10m; }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" ip saddr @contacted dnat to {home.host_ip}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" snat to {home.wan_ip}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" update @contacted {{ ip daddr }} accept
        iifname "wan" oifname "lan" ip saddr @contacted accept
    }}
}}
"""
    lab.run(home.router_ns, "nft", "-f", "-", input=ruleset)


def _masquerade(lab: Lab, home: Home, iptables: str, *extra: str) -> None:
    _forward_policy(lab, home, iptables)
    lab.run(
        home.router_ns,
        iptables,
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "wan",
        "-j",
        "MASQUERADE",
        *extra,
    )


def _port_restricted(lab: Lab, home: Home) -> None:
    _masquerade(lab, home, "iptables")


def _symmetric(lab: Lab, home: Home) -> None:
    _masquerade(lab, home, "iptables", "--random-fully")


def _upnp(lab: Lab, home: Home, *, upnp: bool = True) -> None:
    # miniupnpd-iptables edits the legacy tables through libiptc: the whole router uses them.
    ipt, r = "iptables-legacy", home.router_ns
    _masquerade(lab, home, ipt)
    for table in ("nat", "filter", "mangle"):
        lab.run(r, ipt, "-t", table, "-N", "MINIUPNPD")
    lab.run(r, ipt, "-t", "nat", "-N", "MINIUPNPD-POSTROUTING")
    lab.run(r, ipt, "-t", "nat", "-I", "PREROUTING", "-i", "wan", "-j", "MINIUPNPD")
    lab.run(r, ipt, "-t", "nat", "-I", "POSTROUTING", "-o", "wan", "-j", "MINIUPNPD-POSTROUTING")
    lab.run(r, ipt, "-t", "mangle", "-I", "PREROUTING", "-i", "wan", "-j", "MINIUPNPD")
    lab.run(r, ipt, "-I", "FORWARD", "-i", "wan", "!", "-o", "wan", "-j", "MINIUPNPD")
    lab.start_miniupnpd(home, upnp=upnp)


_NAT_SETUP: dict[str, Callable[[Lab, Home], None]] = {
    "full-cone": _full_cone,
    "address-restricted": _address_restricted,
    "port-restricted": _port_restricted,
    "symmetric": _symmetric,
    "upnp": _upnp,
    "natpmp": partial(_upnp, upnp=False),
}
