"""Two hosts on one machine: two network namespaces joined by a veth pair,
with addresses in a private /24 (and a ULA /64) created here.  Used by
`fastivc bench` (and the tests) to put client and server on different
"hosts" the way containers are."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")


@dataclass
class TwoHosts:
    """Namespaces `<prefix>-a` (client) and `<prefix>-b` (server)."""

    prefix: str = "fivc"
    subnet: int = 201  # 10.<subnet>.0.0/24 and fd00:<subnet>::/64

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}-a"

    @property
    def server_ns(self) -> str:
        return f"{self.prefix}-b"

    def addr(self, ipv: int, host: int) -> str:
        """host 1 = client, 2 = server."""
        return f"10.{self.subnet}.0.{host}" if ipv == 4 else f"fd00:{self.subnet}::{host}"

    def up(self) -> TwoHosts:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root")
        self.down()
        va, vb = f"{self.prefix[:8]}-va", f"{self.prefix[:8]}-vb"
        _ip("netns", "add", self.client_ns)
        _ip("netns", "add", self.server_ns)
        _ip("link", "add", va, "type", "veth", "peer", "name", vb)
        for ns, dev, h in ((self.client_ns, va, 1), (self.server_ns, vb, 2)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(4, h)}/24", "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", f"{self.addr(6, h)}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        return self

    def down(self) -> None:
        for ns in (self.client_ns, self.server_ns):
            _ip("netns", "del", ns, check=False)

    def __enter__(self) -> TwoHosts:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def in_ns(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


@dataclass
class Star:
    """One network namespace per host, `<prefix>-<name>`, each joined by a
    veth pair to a bridge in `<prefix>-sw`: the hosts of a multi-tier
    service, one /24 (10.<subnet>.0.0/24, host i at .i+1).  Everything is
    made inside these namespaces (`ip -n NS link add ... peer ... netns SW`),
    so nothing is added to the machine's own."""

    names: tuple[str, ...]
    prefix: str = "fivt"
    subnet: int = 203

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    def addr(self, name: str) -> str:
        return f"10.{self.subnet}.0.{self.names.index(name) + 1}"

    def up(self) -> Star:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root")
        if len(self.names) > 250:
            raise NetnsError("at most 250 hosts on one /24")
        self.down()
        sw = self.switch_ns
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            ns, port = self.ns(name), f"p{i}"
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", sw)
            _ip("-n", sw, "link", "set", port, "master", "br0")
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(name)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def down(self) -> None:
        for ns in (*(self.ns(n) for n in self.names), self.switch_ns):
            _ip("netns", "del", ns, check=False)

    def __enter__(self) -> Star:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
