"""Network namespaces that tests create, so pods get addresses a real API server accepts.

kube-apiserver refuses loopback (and unspecified, link-local) addresses in EndpointSlices, so
the tests that route through the Kubernetes platforms give each "pod" a network namespace of
its own, joined to the test's namespace by a veth pair with addresses from 198.18.0.0/15 (RFC
2544's benchmarking range, never routed off this machine): the pod's address is ``ip``, this
side's ``host_ip``. Traffic to a pod crosses the veth pair, as it would cross a node's pod
network; nothing leaves the machine.

- processes go in with :meth:`NetNS.command` (``ip netns exec``, which execs: the pid is the
  program's);
- servers of the test process itself get their listening socket created inside the namespace
  by :meth:`NetNS.listen` (``setns(2)`` on this thread around ``socket()``; the socket stays in
  the namespace it was made in), and run in the test's event loop as usual.

Making namespaces needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; without them the
tests that need one are skipped with the reason (:func:`netns_or_skip`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import itertools
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence

import pytest

__all__ = ["NetNS", "NetnsFactory", "NetnsUnavailable", "netns_or_skip"]

CLONE_NEWNET = 0x40000000
BASE = ipaddress.IPv4Address("198.18.0.0")  # 198.18.0.0/15: 32768 /30 subnets
SUBNETS = 1 << 15
_counter = itertools.count()


class NetnsUnavailable(Exception):
    """This machine (or user) cannot make network namespaces; the message says why."""


def _ip_bin() -> str:
    for cand in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise NetnsUnavailable("the `ip` command (iproute2) is not installed")


def _run(*args: str) -> None:
    r = subprocess.run([_ip_bin(), *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetNS:
    """One network namespace with a veth pair to the test's namespace (see the module doc)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"knd-t{index}"
        self.host_link, self.link = f"kndh{index}", f"kndp{index}"
        self.host_ip = str(BASE + 4 * index + 1)
        self.ip = str(BASE + 4 * index + 2)
        self.closed = False

    @classmethod
    def create(cls) -> NetNS:
        """A new namespace, its veth pair up and addressed; raises NetnsUnavailable."""
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root (CAP_NET_ADMIN)")
        _ip_bin()
        last: NetnsUnavailable | None = None
        for _ in range(32):
            # The namespace's name holds its subnet: a name taken (by a parallel test run, or
            # one left over) means the subnet is taken, and the next one is tried.
            index = 1 + (os.getpid() * 97 + next(_counter)) % (SUBNETS - 1)
            ns = cls(index)
            try:
                _run("netns", "add", ns.name)
            except NetnsUnavailable as e:
                last = e
                if "File exists" in str(e):
                    continue
                raise
            try:
                _run("link", "add", ns.host_link, "type", "veth", "peer", "name", ns.link)
                _run("link", "set", ns.link, "netns", ns.name)
                _run("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_link)
                _run("link", "set", ns.host_link, "up")
                _run("-n", ns.name, "addr", "add", f"{ns.ip}/30", "dev", ns.link)
                _run("-n", ns.name, "link", "set", ns.link, "up")
                _run("-n", ns.name, "link", "set", "lo", "up")
            except NetnsUnavailable:
                ns.close()
                raise
            return ns
        raise NetnsUnavailable(f"no free subnet in 198.18.0.0/15 after 32 tries ({last})")

    def close(self) -> None:
        """Delete the namespace and the veth pair (kill the processes inside first)."""
        if self.closed:
            return
        self.closed = True
        for args in (("link", "del", self.host_link), ("netns", "del", self.name)):
            try:
                _run(*args)
            except NetnsUnavailable:
                pass  # not created, or gone with the namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return [_ip_bin(), "netns", "exec", self.name, *argv]

    def listen(self, port: int = 0, host: str | None = None) -> socket.socket:
        """A listening TCP socket inside the namespace, on ``host`` (default: the pod address;
        ``127.0.0.1`` is the namespace's own loopback), non-blocking, for asyncio servers."""
        with (
            open(f"/run/netns/{self.name}") as target,
            open("/proc/thread-self/ns/net") as home,
        ):
            _setns(target.fileno())
            try:
                sock = socket.create_server((host or self.ip, port), backlog=512)
            finally:
                _setns(home.fileno())
        sock.setblocking(False)
        return sock

    async def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        """Until something accepts connections on ``ip:port`` (through the veth pair)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(self.ip, port), 1.0)
            except (OSError, TimeoutError):
                if loop.time() >= deadline:
                    raise AssertionError(
                        f"nothing listens on {self.ip}:{port} in {self.name}"
                    ) from None
                await asyncio.sleep(0.02)
                continue
            w.close()
            return


class NetnsFactory:
    """Makes namespaces for one test and deletes them at teardown."""

    def __init__(self) -> None:
        self.made: list[NetNS] = []

    def new(self) -> NetNS:
        ns = netns_or_skip()
        self.made.append(ns)
        return ns

    def close(self) -> None:
        for ns in self.made:
            ns.close()


def netns_or_skip() -> NetNS:
    """A network namespace, or a skip where none can be made by design (not root, no ``ip``).
    With root and ``ip`` present (CI installs iproute2), a failure is the test's failure: a
    broken set-up must not silently skip the Kubernetes tests."""
    try:
        _ip_bin()
        can = os.geteuid() == 0
    except NetnsUnavailable:
        can = False
    try:
        return NetNS.create()
    except (NetnsUnavailable, subprocess.TimeoutExpired) as e:
        if can and os.environ.get("KND_NETNS_OPTIONAL") != "1":
            raise AssertionError(f"cannot make a network namespace as root: {e}") from None
        pytest.skip(f"cannot make a network namespace for pod addresses: {e}")
