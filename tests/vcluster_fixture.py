"""The ``vcluster`` pytest fixture: a factory of virtual clusters, always torn down.

Use it from a test module with ``from vcluster_fixture import vcluster  # noqa: F401``::

    def test_something(vcluster):
        vc = vcluster(n=4, rate="100mbit")
        vc.exec(1, "iperf3", "-s", "-1", "-D")

Tests that use it are skipped, with the reason, where the user is not root or
``ip netns`` is unavailable (:data:`needs_vcluster`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from beokit.vcluster import driver, plan

REASON = driver.unavailable_reason()
needs_vcluster = pytest.mark.skipif(REASON is not None, reason=f"virtual cluster: {REASON}")
needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None,
                                  reason="needs iperf3 (apt-get install iperf3)")  # fmt: skip
TEST_PREFIX = "bkt"


class VCluster:
    """A running virtual cluster, as a test sees it."""

    def __init__(self, state: driver.State) -> None:
        self.state = state
        self.plan = state.plan
        self.prefix = state.prefix
        self.n = state.plan.spec.n

    def ns(self, host: int) -> str:
        return plan.host_ns(self.prefix, host)

    def addr(self, host: int, nic: int = 0) -> str:
        return self.plan.address(nic, host)

    def argv(self, host: int, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *cmd]

    def exec(self, host: int, *cmd: str, timeout: float = 30,
             check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
        return subprocess.run(self.argv(host, *cmd), capture_output=True, text=True,
                              timeout=timeout, check=check)  # fmt: skip

    def popen(self, host: int, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(host, *cmd), **kw)

    def pids(self, host: int) -> list[int]:
        return driver.pids_in(self.ns(host))

    def wait_listening(self, host: int, port: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.exec(host, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on host{host}:{port}")

    def link(self, host: int, up: bool) -> None:
        driver.link(self.state, host, up)

    def kill(self, host: int) -> int:
        return driver.kill(self.state, host)

    def slow(self, host: int, rate: str) -> None:
        driver.slow(self.state, host, plan.parse_rate(rate))

    def down(self) -> driver.DownReport:
        return driver.down(self.prefix)


def iperf3(vc: VCluster, pairs: list[tuple[int, int]], seconds: int = 3,
           base_port: int = 5201) -> list[float]:  # fmt: skip
    """Run ``len(pairs)`` iperf3 tests (sender, receiver) at once; bits/s received by each."""
    servers = []
    for k, (_, dst) in enumerate(pairs):
        servers.append(vc.popen(dst, "iperf3", "-s", "-1", "-p", str(base_port + k),
                                "-B", vc.addr(dst), stdout=subprocess.DEVNULL))  # fmt: skip
    try:
        for k, (_, dst) in enumerate(pairs):
            vc.wait_listening(dst, base_port + k)
        clients = [vc.popen(src, "iperf3", "-c", vc.addr(dst), "-p", str(base_port + k),
                            "-t", str(seconds), "-J", stdout=subprocess.PIPE, text=True)
                   for k, (src, dst) in enumerate(pairs)]  # fmt: skip
        results = []
        for c in clients:
            out, _ = c.communicate(timeout=seconds + 20)
            data = json.loads(out)
            assert "error" not in data, data["error"]
            results.append(float(data["end"]["sum_received"]["bits_per_second"]))
        return results
    finally:
        for s in servers:
            if s.poll() is None:
                s.kill()
            s.wait()


def make_cluster(n: int = 4, rate: str = "100mbit", prefix: str = TEST_PREFIX,
                 **kw) -> VCluster:  # fmt: skip
    if REASON:
        pytest.skip(f"virtual cluster: {REASON}")
    driver.down(prefix)  # leftovers of a crashed run
    spec = plan.Spec(n=n, rate_bps=plan.parse_rate(rate), prefix=prefix, **kw)
    return VCluster(driver.up(spec))


@pytest.fixture
def vcluster() -> Iterator[Callable[..., VCluster]]:
    """Factory ``vcluster(n=4, rate="100mbit", prefix=None, **Spec fields)``.

    Without a prefix, the k-th cluster of a test is ``bkf{k}`` (never the
    module-scoped ``bkt`` of :func:`vcluster8`).
    """
    made: list[str] = []

    def factory(n: int = 4, rate: str = "100mbit", prefix: str | None = None,
                **kw) -> VCluster:  # fmt: skip
        prefix = prefix or f"bkf{len(made)}"
        made.append(prefix)
        return make_cluster(n, rate, prefix, **kw)

    try:
        yield factory
    finally:
        for prefix in made:
            driver.down(prefix)


@pytest.fixture(scope="module")
def vcluster8() -> Iterator[VCluster]:
    """One 8-host, 100 Mbit/s cluster shared by a module's tests."""
    vc = make_cluster(8, "100mbit", TEST_PREFIX)
    try:
        yield vc
    finally:
        vc.down()
